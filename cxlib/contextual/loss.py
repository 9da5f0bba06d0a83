"""The contextual loss and similarity, the public API: :func:`contextual_loss`,
:func:`contextual_similarity` and :class:`ContextualLoss`.

Each call checks its settings (:mod:`.settings`), reads the feature maps as point sets and
samples positions if asked (:mod:`.sampling`), prepares them for the distance
(:mod:`.distances`) and computes CX(X, Y) on the path that :mod:`.paths` chooses.
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_choice, check_generator
from .._reduction import REDUCTIONS, reduce_batch
from .distances import prepare_points
from .full import Term
from .paths import score_terms
from .precision import computation_dtype
from .sampling import outside_autocast, sampled_point_sets
from .settings import Settings, check_settings

__all__ = ["ContextualLoss", "contextual_loss", "contextual_similarity"]


def _result_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of the result: the features' own, but float32 for half precision."""
    return computation_dtype(x.dtype)


def _compute_similarity(
    x: torch.Tensor, y: torch.Tensor, settings: Settings, generator: torch.Generator | None
) -> torch.Tensor:
    """CX(X, Y) per sample, in float32 for half-precision input, else in the input's dtype."""
    with outside_autocast(x):
        x_points, y_points, _, _ = sampled_point_sets(x, y, settings, generator)
        x_points, y_points = prepare_points(settings.distance, x_points, y_points, settings.centring)
        return score_terms([Term(x_points, y_points, settings.distance)], settings)


def contextual_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    band_width: float = 0.5,
    eps: float = 1e-5,
    distance: str = "cosine",
    reduction: str = "mean",
    implementation: str = "auto",
    block_size: int | None = None,
    sample_positions: int | None = None,
    generator: torch.Generator | None = None,
    check_finite: bool = True,
    centring: str = "sample",
) -> torch.Tensor:
    r"""Contextual loss :math:`\mathcal{L}_{CX} = -\log \mathrm{CX}(X, Y)` (Eq. 5 of the paper).

    0 when every target feature has a distinct, clearly closest generated feature (for example
    ``x`` equal to ``y``); about :math:`\log N` when the two sets are far apart.

    With :math:`x_i` the generated points, :math:`y_j` the :math:`N` target points and
    :math:`\mu_y = \frac{1}{N}\sum_j y_j` (per sample):

    .. math::

        d_{ij} = 1 - \frac{(x_i - \mu_y)\cdot(y_j - \mu_y)}{\|x_i - \mu_y\|_2\,\|y_j - \mu_y\|_2}

    .. math::

        \tilde d_{ij} = \frac{d_{ij}}{\min_k d_{ik} + \epsilon},
        \qquad
        w_{ij} = \exp\Big(\frac{1 - \tilde d_{ij}}{h}\Big),
        \qquad
        \mathrm{CX}_{ij} = \frac{w_{ij}}{\sum_k w_{ik}}

    .. math::

        \mathrm{CX}(X, Y) = \frac{1}{N}\sum_j \max_i \mathrm{CX}_{ij},
        \qquad
        \mathcal{L}_{CX} = -\log \mathrm{CX}(X, Y)

    :math:`\mathrm{CX}_{ij}` is computed as a softmax over :math:`k`, so small :math:`h` never
    overflows.

    cxlib follows the paper where the authors' TensorFlow code differs from it:

    - The code's cosine distance is :math:`(1 - \cos)/2`. Halving every :math:`d_{ij}` is the
      same as doubling :math:`\epsilon` in Eq. 2 (``eps=2e-5`` here reproduces the code's
      values exactly); on random features with h from 0.1 to 1 the loss moved by at most 1.1e-4.
    - The code centres by the mean of the targets over the whole batch, not per image, which
      couples the samples: one sample's loss changed by 0.023 (median of 20 random batches;
      up to 0.065) when the other two samples of a batch of 3 were replaced. Here each
      sample's loss depends on that sample only, unless ``centring="batch"`` asks for the
      code's convention.

    Both figures were measured with a float64 transcription of the code's conventions
    (``tests/test_authors_conventions.py`` checks them).

    Args:
        x: features of the generated image.
        y: features of the target image.
        band_width: h > 0 of Eq. 3. Smaller values make the similarity more selective.
        eps: epsilon of Eq. 2, at least 1e-12 (:data:`cxlib.contextual.settings.MIN_EPS`). It
            keeps d~ finite when a generated point equals a target point. Values far below the
            rounding error of the distances (about 1e-7 in float32) make the result depend on
            that rounding, and 0 would divide by zero, so they are refused.
        distance: ``"cosine"`` (the paper's), ``"l2"`` (squared Euclidean) or ``"l1"``.
        reduction: ``"mean"`` or ``"sum"`` over the batch, or ``"none"``.
        implementation: ``"full"`` holds the whole (Nx, N) matrices (the reference);
            ``"blocked"`` computes the same values and gradients in blocks of rows with
            O(block_size * N) memory; ``"fused"`` streams over tiles in Triton kernels with O(N)
            memory (CUDA; cosine and L2; float32); ``"auto"`` takes the blocked path when a
            ``block_size`` is given; on a GPU that the stored benchmarks cover, the path measured
            fastest at the nearest size (:mod:`cxlib.contextual.measured`; the fused one only
            after its check on the device, see :mod:`cxlib.contextual.fused_check`); elsewhere
            the full path while B * Nx * N is at most
            :data:`cxlib.contextual.paths.AUTO_FULL_MAX_ELEMENTS`, else the blocked one.
        block_size: rows of the (Nx, N) matrix per block (blocked path); ``None`` picks one.
        sample_positions: if set, keep at most this many random positions of each map before
            comparing them, as the authors' code does above 65x65 (4225) positions. The same
            positions are kept in both maps when they have the same size. Exact (``None``) by
            default.
        generator: CPU random generator for ``sample_positions`` (``None``: torch's global
            one); e.g. ``torch.Generator().manual_seed(0)`` for reproducible positions.
        check_finite: refuse NaN and inf in ``x`` and ``y`` with a ``ValueError``. The check
            costs one device synchronisation per call (on a GPU, the CPU waits for the queued
            work); pass ``False`` in a training loop whose inputs are checked elsewhere, and a
            NaN input then gives a NaN loss.
        centring: ``"sample"`` (the paper, the default): each sample is centred by its own
            target's mean; ``"batch"``: by the mean of all the batch's target points, as the
            authors' TensorFlow code does, which couples the samples. With ``"batch"`` and
            ``eps=2e-5`` (for their (1 - cos)/2) cxlib gives their code's values.

    Shape:
        - x: (B, C, Hx, Wx); y: (B, C, Hy, Wy). Hx * Wx may differ from Hy * Wy.
        - Output: a scalar, or (B,) with ``reduction="none"``.

    Returns:
        The loss, in the dtype of ``x``; float32 for float16/bfloat16 features (computed in
        float32, and returned so, as autocast's own losses are: a float16 loss would overflow
        a gradient scaler's first scale).

    Raises:
        TypeError: non-tensor or non-floating-point input, mismatched dtypes.
        ValueError: wrong number of dimensions, mismatched batch or channels, NaN or inf in the
            features, or hyper-parameters out of range.

    Example:
        >>> import torch, cxlib
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(1, 16, 8, 8, requires_grad=True)
        >>> y = torch.randn(1, 16, 6, 6)
        >>> loss = cxlib.contextual_loss(x, y, band_width=0.5)
        >>> loss.backward()
        >>> bool(loss > 0), x.grad.shape
        (True, torch.Size([1, 16, 8, 8]))
    """
    settings = check_settings(
        band_width, eps, distance, implementation, block_size, sample_positions, check_finite,
        centring,
    )
    reduction = check_choice("reduction", reduction, REDUCTIONS)
    generator = check_generator("generator", generator)
    similarity = _compute_similarity(x, y, settings, generator)
    return reduce_batch(-torch.log(similarity), reduction).to(_result_dtype(x))


def contextual_similarity(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    band_width: float = 0.5,
    eps: float = 1e-5,
    distance: str = "cosine",
    implementation: str = "auto",
    block_size: int | None = None,
    sample_positions: int | None = None,
    generator: torch.Generator | None = None,
    check_finite: bool = True,
    centring: str = "sample",
) -> torch.Tensor:
    r"""Contextual similarity CX(X, Y) of each sample, in [0, 1] (Eq. 1 of the paper).

    For each target feature :math:`y_j` it finds the generated feature :math:`x_i` that is most
    contextually similar to it and averages those similarities over :math:`j`. The steps, and
    where cxlib and the authors' code differ, are written out in :func:`contextual_loss`, which
    is :math:`-\log` of this.

    Args:
        x: features of the generated image.
        y: features of the target image.
        band_width: h > 0 of Eq. 3.
        eps: epsilon >= 1e-12 of Eq. 2.
        distance: ``"cosine"``, ``"l2"`` or ``"l1"``.
        implementation: ``"auto"``, ``"full"``, ``"blocked"`` or ``"fused"`` (see
            :func:`contextual_loss`).
        block_size: rows of the (Nx, N) matrix per block (blocked path); ``None`` picks one.
        sample_positions: keep at most this many random positions, or ``None`` (exact).
        generator: CPU random generator for ``sample_positions``.
        check_finite: refuse NaN and inf inputs (one device synchronisation per call).
        centring: ``"sample"`` (the paper) or ``"batch"`` (the authors' code); see
            :func:`contextual_loss`.

    Shape:
        - x: (B, C, Hx, Wx); y: (B, C, Hy, Wy). Hx * Wx may differ from Hy * Wy.
        - Output: (B,).

    Returns:
        CX(X, Y) per sample, in the dtype of ``x``; float32 for float16/bfloat16 features.

    Raises:
        TypeError: non-tensor or non-floating-point input, mismatched dtypes.
        ValueError: wrong number of dimensions, mismatched batch or channels, NaN or inf in the
            features, or hyper-parameters out of range.

    Example:
        >>> import torch, cxlib
        >>> x = torch.randn(2, 8, 5, 5)
        >>> cxlib.contextual_similarity(x, x)
        tensor([1., 1.])
    """
    settings = check_settings(
        band_width, eps, distance, implementation, block_size, sample_positions, check_finite,
        centring,
    )
    generator = check_generator("generator", generator)
    return _compute_similarity(x, y, settings, generator).to(_result_dtype(x))


class ContextualLoss(nn.Module):
    """The contextual loss as a module; ``forward(x, y)`` calls :func:`contextual_loss`.

    Args:
        band_width: h > 0 of Eq. 3.
        eps: epsilon >= 1e-12 of Eq. 2.
        distance: ``"cosine"``, ``"l2"`` or ``"l1"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the batch.
        implementation: ``"auto"``, ``"full"``, ``"blocked"`` or ``"fused"``.
        block_size: rows per block for the blocked path, or ``None``.
        sample_positions: keep at most this many random positions, or ``None`` (exact).
        generator: CPU random generator that draws the positions for ``sample_positions``, kept
            by the module and advanced at every call, so a run seeded once is reproducible
            (``None``: torch's global generator).
        check_finite: refuse NaN and inf inputs (one device synchronisation per call); see
            :func:`contextual_loss`.
        centring: ``"sample"`` (the paper) or ``"batch"`` (the authors' code).

    Shape:
        - x: (B, C, Hx, Wx); y: (B, C, Hy, Wy).
        - Output: a scalar, or (B,) with ``reduction="none"``.

    Example:
        >>> import torch, cxlib
        >>> criterion = cxlib.ContextualLoss(band_width=0.1)
        >>> x = torch.randn(2, 8, 6, 6)
        >>> float(criterion(x, x))
        0.0
    """

    def __init__(
        self,
        *,
        band_width: float = 0.5,
        eps: float = 1e-5,
        distance: str = "cosine",
        reduction: str = "mean",
        implementation: str = "auto",
        block_size: int | None = None,
        sample_positions: int | None = None,
        generator: torch.Generator | None = None,
        check_finite: bool = True,
        centring: str = "sample",
    ) -> None:
        super().__init__()
        settings = check_settings(
            band_width, eps, distance, implementation, block_size, sample_positions, check_finite,
            centring,
        )
        self.band_width = settings.band_width
        self.eps = settings.eps
        self.distance = settings.distance
        self.reduction = check_choice("reduction", reduction, REDUCTIONS)
        self.implementation = settings.implementation
        self.block_size = settings.block_size
        self.sample_positions = settings.sample_positions
        self.generator = check_generator("generator", generator)
        self.check_finite = settings.check_finite
        self.centring = settings.centring

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return contextual_loss(
            x,
            y,
            band_width=self.band_width,
            eps=self.eps,
            distance=self.distance,
            reduction=self.reduction,
            implementation=self.implementation,
            block_size=self.block_size,
            sample_positions=self.sample_positions,
            generator=self.generator,
            check_finite=self.check_finite,
            centring=self.centring,
        )

    def extra_repr(self) -> str:
        return (
            f"band_width={self.band_width}, eps={self.eps}, distance={self.distance!r}, "
            f"reduction={self.reduction!r}, implementation={self.implementation!r}"
        )
