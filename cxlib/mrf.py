r"""The CNNMRF loss (Li and Wand, CVPR 2016): every feature patch pulled to its nearest style patch.

The second baseline of the style-transfer chapter. Each k x k patch :math:`\Psi_i(\Phi(x))` of
the generated image's feature map is matched to the patch of the style image's features with the
largest normalised cross-correlation, and the loss is their squared distance:

.. math::

    \mathcal{L}_{MRF}(x, y) = \frac{1}{N_x D} \sum_i \|\Psi_i(\Phi(x)) - \Psi_{NN(i)}(\Phi(y))\|_2^2,
    \qquad NN(i) = \arg\max_j \frac{\Psi_i(\Phi(x)) \cdot \Psi_j(\Phi(y))}
    {\|\Psi_i(\Phi(x))\|\,\|\Psi_j(\Phi(y))\|},

with :math:`D` the length of a patch vector. The matching is recomputed at every call and is not
differentiated (as in the original); the nearest patches are searched in blocks of rows, so the
memory stays O(block x N).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_positive_int, check_tensor
from ._reduction import reduce_batch

__all__ = ["mrf_loss"]

# Rows of the (Nx, Ny) correlation matrix searched at once.
_SEARCH_ROWS = 1024


def _patches(features: torch.Tensor, size: int, stride: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, number of patches, C * size * size)."""
    return F.unfold(features, kernel_size=size, stride=stride).transpose(1, 2)


def mrf_loss(x_features: torch.Tensor, y_features: torch.Tensor, *, patch_size: int = 3,
             stride: int = 1, reduction: str = "mean") -> torch.Tensor:
    """CNNMRF loss between the features of a generated image and of a style image.

    Args:
        x_features: features of the generated image.
        y_features: features of the style image.
        patch_size: side k of the feature patches (3 in Li and Wand).
        stride: step between the generated image's patches (the style's are taken at every
            position).
        reduction: ``"mean"``, ``"sum"`` over the batch, or ``"none"``.

    Shape:
        - x_features: (B, C, Hx, Wx); y_features: (B, C, Hy, Wy), both at least k x k.
        - Output: a scalar, or (B,) with ``reduction="none"``.

    Returns:
        The loss.

    Example:
        >>> import torch, cxlib
        >>> f = torch.randn(1, 8, 6, 6)
        >>> float(cxlib.mrf_loss(f, f))
        0.0
    """
    x_features = check_tensor("x_features", x_features, ndim=4)
    y_features = check_tensor("y_features", y_features, ndim=4)
    patch_size = check_positive_int("patch_size", patch_size)
    stride = check_positive_int("stride", stride)
    if x_features.shape[:2] != y_features.shape[:2]:
        raise ValueError(
            "x_features and y_features must have the same batch size and channels, "
            f"got {tuple(x_features.shape)} and {tuple(y_features.shape)}"
        )
    for name, f in (("x_features", x_features), ("y_features", y_features)):
        if min(f.shape[2:]) < patch_size:
            raise ValueError(f"{name} must be at least {patch_size}x{patch_size}, got {tuple(f.shape)}")
    x_patches = _patches(x_features, patch_size, stride)
    y_patches = _patches(y_features, patch_size, 1)
    with torch.no_grad():
        y_unit = F.normalize(y_patches, dim=-1)
        nearest = torch.cat([
            torch.bmm(F.normalize(block, dim=-1), y_unit.transpose(1, 2)).argmax(dim=-1)
            for block in x_patches.detach().split(_SEARCH_ROWS, dim=1)
        ], dim=1)
    matched = y_patches.gather(1, nearest.unsqueeze(-1).expand(-1, -1, y_patches.shape[-1]))
    per_sample = (x_patches - matched).square().mean(dim=(1, 2))
    return reduce_batch(per_sample, reduction)
