r"""The losses the paper compares against (definitions from the paper's "Other loss functions").

Pixel-to-pixel losses, which need the two images aligned:

- :math:`\mathcal{L}_1(x, y) = \|x - y\|_1` (:func:`l1_loss`),
- :math:`\mathcal{L}_2(x, y) = \|x - y\|_2` (:func:`l2_loss`, as its mean square),
- the perceptual loss :math:`\mathcal{L}_P(x, y, l) = \|\Phi^l(x) - \Phi^l(y)\|_1`
  (:func:`perceptual_loss`, on features);

a global loss, which compares statistics of the whole image:

- the Gram loss :math:`\mathcal{L}_{Gram}(x, y, l) = \|G^l(x) - G^l(y)\|_F^2`
  (:func:`gram_loss`, normalised as Gatys et al.);

and the total variation, a smoothness prior (:func:`total_variation`).

Each loss is a function on tensors plus a thin module; the reduction runs over the batch.
"""

from __future__ import annotations

import torch
from torch import nn

from ._checks import check_choice, check_tensor
from ._reduction import REDUCTIONS, reduce_batch

__all__ = [
    "L1Loss",
    "L2Loss",
    "TotalVariation",
    "gram_loss",
    "gram_matrix",
    "l1_loss",
    "l2_loss",
    "perceptual_loss",
    "total_variation",
]

def _aligned_pair(x: object, y: object) -> tuple[torch.Tensor, torch.Tensor]:
    x = check_tensor("x", x, ndim=4)
    y = check_tensor("y", y, ndim=4)
    if x.shape != y.shape:
        raise ValueError(
            "x and y must have the same shape (this loss compares aligned positions), "
            f"got x {tuple(x.shape)} and y {tuple(y.shape)}"
        )
    return x, y


def l1_loss(x: torch.Tensor, y: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    r"""Mean absolute difference, :math:`\|x - y\|_1` divided by the number of elements.

    Args:
        x: generated images or features.
        y: targets, aligned with ``x``.
        reduction: ``"mean"``, ``"sum"`` over the batch, or ``"none"``.

    Shape:
        - x, y: (B, C, H, W), the same shape.
        - Output: a scalar, or (B,) with ``reduction="none"``.

    Returns:
        The loss, in the dtype of ``x``.

    Example:
        >>> import torch, cxlib
        >>> cxlib.l1_loss(torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, -1.0], [2.0, 0.0]]]]))
        tensor(1.)
    """
    x, y = _aligned_pair(x, y)
    return reduce_batch((x - y).abs().flatten(1).mean(1), reduction)


def l2_loss(x: torch.Tensor, y: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    r"""Mean squared difference, :math:`\|x - y\|_2^2` divided by the number of elements.

    The paper writes :math:`\|x - y\|_2`; its mean square has the same minimiser and a gradient
    whose size does not depend on the image size, and is what is used in practice.

    Args:
        x: generated images or features.
        y: targets, aligned with ``x``.
        reduction: ``"mean"``, ``"sum"`` over the batch, or ``"none"``.

    Shape:
        - x, y: (B, C, H, W), the same shape.
        - Output: a scalar, or (B,) with ``reduction="none"``.

    Returns:
        The loss, in the dtype of ``x``.

    Example:
        >>> import torch, cxlib
        >>> cxlib.l2_loss(torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, -1.0], [2.0, 0.0]]]]))
        tensor(1.5000)
    """
    x, y = _aligned_pair(x, y)
    return reduce_batch((x - y).square().flatten(1).mean(1), reduction)


def perceptual_loss(x_features: torch.Tensor, y_features: torch.Tensor, *,
                    reduction: str = "mean") -> torch.Tensor:
    r"""Perceptual loss on features of one layer: :math:`\|\Phi^l(x) - \Phi^l(y)\|_1`, as a mean.

    Johnson et al. compare VGG features of the two images position by position; this is the L1
    form the paper uses. Compute the features with :class:`cxlib.VGG19Features`, or use
    :class:`cxlib.PerceptualLoss` on images.

    Args:
        x_features: features of the generated image at layer l.
        y_features: features of the target at the same layer.
        reduction: ``"mean"``, ``"sum"`` over the batch, or ``"none"``.

    Shape:
        - x_features, y_features: (B, C, H, W), the same shape.
        - Output: a scalar, or (B,) with ``reduction="none"``.

    Returns:
        The loss.

    Example:
        >>> import torch, cxlib
        >>> cxlib.perceptual_loss(torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, 2))
        tensor(1.)
    """
    return l1_loss(x_features, y_features, reduction=reduction)


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    r"""Normalised Gram matrix :math:`G_{cd} = \frac{1}{C H W}\sum_p F_{cp} F_{dp}`.

    Args:
        features: a feature map.

    Shape:
        - features: (B, C, H, W).
        - Output: (B, C, C).

    Returns:
        The Gram matrices.

    Example:
        >>> import torch, cxlib
        >>> cxlib.gram_matrix(torch.ones(1, 2, 3, 3))
        tensor([[[0.5000, 0.5000],
                 [0.5000, 0.5000]]])
    """
    features = check_tensor("features", features, ndim=4)
    batch, channels = features.shape[:2]
    flat = features.reshape(batch, channels, -1)
    return torch.bmm(flat, flat.transpose(1, 2)) / flat[0].numel()


def gram_loss(x_features: torch.Tensor, y_features: torch.Tensor, *,
              reduction: str = "mean") -> torch.Tensor:
    r"""Gram loss of one layer, normalised as Gatys et al.

    .. math::

        \mathcal{L}_{Gram} = \frac{1}{4 C^2 M^2} \sum_{c,d} (F F^\top - \hat F \hat F^\top)_{cd}^2
        = \tfrac14 \|G(x) - G(y)\|_F^2,

    with :math:`M = H W` positions and :math:`G` from :func:`gram_matrix`. Each image's Gram
    matrix is normalised by its own size, so the two images may differ in size.

    Args:
        x_features: features of the generated image.
        y_features: features of the target.
        reduction: ``"mean"``, ``"sum"`` over the batch, or ``"none"``.

    Shape:
        - x_features: (B, C, Hx, Wx); y_features: (B, C, Hy, Wy).
        - Output: a scalar, or (B,) with ``reduction="none"``.

    Returns:
        The loss.

    Example:
        >>> import torch, cxlib
        >>> f = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
        >>> cxlib.gram_loss(f, torch.zeros_like(f))  # (5^2 + 2 * 11^2 + 25^2) / (4 * 2^2 * 2^2)
        tensor(13.9375)
    """
    x_features = check_tensor("x_features", x_features, ndim=4)
    y_features = check_tensor("y_features", y_features, ndim=4)
    if x_features.shape[:2] != y_features.shape[:2]:
        raise ValueError(
            "x_features and y_features must have the same batch size and channels, "
            f"got {tuple(x_features.shape)} and {tuple(y_features.shape)}"
        )
    diff = gram_matrix(x_features) - gram_matrix(y_features)
    return reduce_batch(0.25 * diff.square().sum(dim=(1, 2)), reduction)


def _check_power(p: object) -> int:
    if isinstance(p, bool) or p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p!r}")
    return p


def total_variation(images: torch.Tensor, *, p: int = 1, reduction: str = "mean") -> torch.Tensor:
    r"""Total variation: differences between neighbouring pixels, averaged over the pixels.

    .. math::

        TV_p(x) = \frac{1}{C H W}\Big(\sum |x_{c,i+1,j} - x_{c,i,j}|^p
        + \sum |x_{c,i,j+1} - x_{c,i,j}|^p\Big)

    Args:
        images: (B, C, H, W).
        p: 1 (anisotropic TV, edges kept) or 2 (squared differences, smoother).
        reduction: ``"mean"``, ``"sum"`` over the batch, or ``"none"``.

    Shape:
        - images: (B, C, H, W).
        - Output: a scalar, or (B,) with ``reduction="none"``.

    Returns:
        A scalar, or (B,) with ``reduction="none"``.

    Example:
        >>> import torch, cxlib
        >>> cxlib.total_variation(torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]]))
        tensor(0.5000)
    """
    images = check_tensor("images", images, ndim=4)
    _check_power(p)
    down = (images[:, :, 1:, :] - images[:, :, :-1, :]).abs().pow(p).flatten(1).sum(1)
    right = (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().pow(p).flatten(1).sum(1)
    return reduce_batch((down + right) / images[0].numel(), reduction)


class _PairLoss(nn.Module):
    def __init__(self, *, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_choice("reduction", reduction, REDUCTIONS)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class L1Loss(_PairLoss):
    """Module form of :func:`l1_loss`; ``forward(x, y)`` calls it.

    Args:
        reduction: ``"mean"``, ``"sum"`` over the batch, or ``"none"``.

    Shape:
        - x, y: (B, C, H, W), the same shape.
        - Output: a scalar, or (B,) with ``reduction="none"``.

    Example:
        >>> import torch, cxlib
        >>> cxlib.L1Loss()(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
        tensor(1.)
    """

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return l1_loss(x, y, reduction=self.reduction)


class L2Loss(_PairLoss):
    """Module form of :func:`l2_loss`; ``forward(x, y)`` calls it.

    Args:
        reduction: ``"mean"``, ``"sum"`` over the batch, or ``"none"``.

    Shape:
        - x, y: (B, C, H, W), the same shape.
        - Output: a scalar, or (B,) with ``reduction="none"``.

    Example:
        >>> import torch, cxlib
        >>> cxlib.L2Loss()(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
        tensor(1.)
    """

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return l2_loss(x, y, reduction=self.reduction)


class TotalVariation(nn.Module):
    """Module form of :func:`total_variation`; ``forward(images)`` calls it.

    Args:
        p: 1 or 2.
        reduction: ``"mean"``, ``"sum"`` over the batch, or ``"none"``.

    Shape:
        - images: (B, C, H, W).
        - Output: a scalar, or (B,) with ``reduction="none"``.

    Example:
        >>> import torch, cxlib
        >>> cxlib.TotalVariation()(torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]]))
        tensor(0.5000)
    """

    def __init__(self, *, p: int = 1, reduction: str = "mean") -> None:
        super().__init__()
        self.p = _check_power(p)
        self.reduction = check_choice("reduction", reduction, REDUCTIONS)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return total_variation(images, p=self.p, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"p={self.p}, reduction={self.reduction!r}"
