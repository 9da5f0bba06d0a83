r"""The contextual similarity and the contextual loss (Mechrez, Talmi, Zelnik-Manor, ECCV 2018).

Public entry points: :func:`contextual_similarity`, :func:`contextual_loss`,
:class:`ContextualLoss` and :func:`contextual_matrices`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._checks import (
    check_choice,
    check_feature_pair,
    check_flag,
    check_generator,
    check_positive,
    check_positive_int,
)
from ._reduction import REDUCTIONS, reduce_batch
from .blocked import blocked_similarity
from .distances import DISTANCES, as_point_sets, pairwise_distance, prepare_points
from .fused import FUSED_DISTANCES, check_fused_size, fits_fused, fused_available, fused_similarity
from .fused_check import fused_verdict
from .similarity import Term, relative_distance, similarity_from_terms, similarity_logits

__all__ = [
    "AUTO_FULL_MAX_ELEMENTS",
    "AUTO_USES_FUSED",
    "IMPLEMENTATIONS",
    "ContextualLoss",
    "ContextualMatrices",
    "contextual_loss",
    "contextual_matrices",
    "contextual_similarity",
]

#: Values of ``implementation=``: ``"auto"`` picks ``"full"`` for small problems and
#: ``"blocked"`` above (and ``"fused"`` on CUDA where :data:`AUTO_USES_FUSED` allows it).
IMPLEMENTATIONS = ("auto", "full", "blocked", "fused")
#: ``"auto"`` uses the full path while B * Nx * N is at most this (a 16 MiB float32 matrix).
AUTO_FULL_MAX_ELEMENTS = 1 << 22
#: Whether ``"auto"`` may take the fused Triton kernels on CUDA. Off until a GPU benchmark shows
#: them faster than the blocked path on cuBLAS (``python -m cxlib.gpu_check`` measures both).
#: When on, the kernels are first checked on the device against the blocked path (see
#: :mod:`cxlib.fused_check`) and "auto" falls back to the blocked path if they fail the check.
AUTO_USES_FUSED = False


@dataclass(frozen=True)
class Settings:
    """Checked hyper-parameters shared by the contextual losses."""

    band_width: float
    eps: float
    distance: str
    implementation: str
    block_size: int | None
    sample_positions: int | None
    check_finite: bool = True


def check_settings(
    band_width: object,
    eps: object,
    distance: object,
    implementation: object,
    block_size: object,
    sample_positions: object,
    check_finite: object = True,
) -> Settings:
    return Settings(
        band_width=check_positive("band_width", band_width),
        eps=check_positive("eps", eps),
        distance=check_choice("distance", distance, DISTANCES),
        implementation=check_choice("implementation", implementation, IMPLEMENTATIONS),
        block_size=check_positive_int("block_size", block_size, allow_none=True),
        sample_positions=check_positive_int("sample_positions", sample_positions, allow_none=True),
        check_finite=check_flag("check_finite", check_finite),
    )


def _random_positions(
    num: int, count: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor | None:
    """``count`` distinct positions out of ``num`` at random, or ``None`` if all are kept."""
    if num <= count:
        return None
    return torch.randperm(num, generator=generator)[:count].to(device)


def sampled_point_sets(
    x: torch.Tensor, y: torch.Tensor, settings: Settings, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Check two feature maps and return them as point sets (B, Nx, C), (B, N, C).

    Half precision is raised to float32. With ``settings.sample_positions``, only a random subset
    of positions is kept; the kept indices of x and y are returned too (``None``: all kept).
    """
    x, y = check_feature_pair(x, y, finite=settings.check_finite)
    if x.dtype in (torch.float16, torch.bfloat16):
        # Eq. 2 divides by a small minimum distance: half precision is not enough for it.
        x, y = x.float(), y.float()
    x_points, y_points = as_point_sets(x), as_point_sets(y)
    x_index = y_index = None
    if settings.sample_positions is not None:
        # As the authors' code: the same random positions for every sample of the batch, and in
        # both maps when they have the same size.
        count, num_x, num_y = settings.sample_positions, x_points.shape[1], y_points.shape[1]
        y_index = _random_positions(num_y, count, generator, y.device)
        x_index = y_index if num_x == num_y else _random_positions(num_x, count, generator, x.device)
        if y_index is not None:
            y_points = y_points[:, y_index]
        if x_index is not None:
            x_points = x_points[:, x_index]
    return x_points, y_points, x_index, y_index


def _auto_fused_device(device: torch.device) -> bool:
    """Where "auto" may consider the fused kernels: CUDA devices (never Triton's interpreter)."""
    return device.type == "cuda" and fused_available(device)


def _auto_implementation(terms: list[Term], settings: Settings) -> str:
    x_points, y_points = terms[0].x_points, terms[0].y_points
    batch, num_x, num_y = x_points.shape[0], x_points.shape[1], y_points.shape[1]
    fusable = (AUTO_USES_FUSED and len(terms) == 1 and terms[0].distance in FUSED_DISTANCES
               and settings.block_size is None and x_points.dtype != torch.float64
               and fits_fused(x_points.shape, y_points.shape))
    if fusable and _auto_fused_device(x_points.device):
        if fused_verdict(x_points.device, terms[0].distance, x_points.dtype) is None:
            return "fused"
    full_fits = batch * num_x * num_y <= AUTO_FULL_MAX_ELEMENTS
    return "full" if full_fits and settings.block_size is None else "blocked"


def _check_fused_applies(terms: list[Term]) -> None:
    if len(terms) != 1 or terms[0].distance not in FUSED_DISTANCES:
        raise ValueError(
            f"implementation='fused' computes one term with distance in {FUSED_DISTANCES}; "
            f"got {[t.distance for t in terms]} (use 'blocked')"
        )
    check_fused_size(terms[0].x_points.shape, terms[0].y_points.shape)
    device = terms[0].x_points.device
    if not fused_available(device):
        raise ValueError(
            f"implementation='fused' runs Triton kernels on a CUDA device and needs Triton >= 3.0; "
            f"got tensors on {device}. Use implementation='auto' (chooses for you), 'blocked' "
            f"(any device, O(block_size * N) memory) or 'full' (the reference, O(N^2) memory)."
        )


def score_terms(terms: list[Term], settings: Settings) -> torch.Tensor:
    """CX(X, Y) per sample of the mixed terms, on the path ``settings.implementation`` asks for."""
    implementation = settings.implementation
    if implementation == "auto":
        implementation = _auto_implementation(terms, settings)
    if implementation == "fused":
        _check_fused_applies(terms)
        term = terms[0]
        score = fused_similarity(term.x_points, term.y_points, distance=term.distance,
                                 band_width=settings.band_width, eps=settings.eps)
        return score.to(term.x_points.dtype)
    if implementation == "full":
        return similarity_from_terms(terms, settings.band_width, settings.eps)
    return blocked_similarity(
        terms, band_width=settings.band_width, eps=settings.eps, block_rows=settings.block_size
    )


def _compute_similarity(
    x: torch.Tensor, y: torch.Tensor, settings: Settings, generator: torch.Generator | None
) -> torch.Tensor:
    """CX(X, Y) per sample, in float32 for half-precision input, else in the input's dtype."""
    x_points, y_points, _, _ = sampled_point_sets(x, y, settings, generator)
    x_points, y_points = prepare_points(settings.distance, x_points, y_points)
    return score_terms([Term(x_points, y_points, settings.distance)], settings)


_MATH = r"""
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
      up to 0.065) when the other two samples of a batch of 3 were replaced. Here each sample's loss depends on that
      sample only.

    Both figures were measured with a float64 transcription of the code's conventions
    (``tests/test_authors_conventions.py`` checks them).
"""

_ARGS_MATH = """
        band_width: h > 0 of Eq. 3. Smaller values make the similarity more selective.
        eps: epsilon > 0 of Eq. 2. It keeps d~ finite when a generated point equals a target
            point. Values far below the rounding error of the distances (about 1e-7 in
            float32) make the result depend on that rounding, so 0 is refused.
        distance: ``"cosine"`` (the paper's), ``"l2"`` (squared Euclidean) or ``"l1"``.
"""

_ARGS_COMPUTE = """        implementation: ``"full"`` holds the whole (Nx, N) matrices (the reference);
            ``"blocked"`` computes the same values and gradients in blocks of rows with
            O(block_size * N) memory; ``"fused"`` streams over tiles in Triton kernels with O(N)
            memory (CUDA; cosine and L2; float32); ``"auto"`` takes the full path while
            B * Nx * N is at most :data:`AUTO_FULL_MAX_ELEMENTS` and no ``block_size`` is given,
            else the blocked one (and the fused one on CUDA if :data:`AUTO_USES_FUSED` is set and
            the kernels pass their check on the device, see :mod:`cxlib.fused_check`).
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
"""


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
) -> torch.Tensor:
    settings = check_settings(
        band_width, eps, distance, implementation, block_size, sample_positions, check_finite
    )
    generator = check_generator("generator", generator)
    return _compute_similarity(x, y, settings, generator).to(x.dtype)


contextual_similarity.__doc__ = (
    r"""Contextual similarity CX(X, Y) of each sample, in [0, 1] (equation 5 of the paper).

    For each target feature :math:`y_j` it finds the generated feature :math:`x_i` that is most
    contextually similar to it and averages those similarities over :math:`j`.
"""
    + _MATH
    + """
    Args:
        x: features of the generated image.
        y: features of the target image.
"""
    + _ARGS_MATH
    + _ARGS_COMPUTE
    + """
    Shape:
        - x: (B, C, Hx, Wx); y: (B, C, Hy, Wy). Hx * Wx may differ from Hy * Wy.
        - Output: (B,).

    Returns:
        CX(X, Y) per sample, in the dtype of ``x`` (float16/bfloat16 are computed in float32).

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
)


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
) -> torch.Tensor:
    settings = check_settings(
        band_width, eps, distance, implementation, block_size, sample_positions, check_finite
    )
    reduction = check_choice("reduction", reduction, REDUCTIONS)
    generator = check_generator("generator", generator)
    similarity = _compute_similarity(x, y, settings, generator)
    return reduce_batch(-torch.log(similarity), reduction).to(x.dtype)


contextual_loss.__doc__ = (
    r"""Contextual loss :math:`\mathcal{L}_{CX} = -\log \mathrm{CX}(X, Y)` (equation 6 of the paper).

    0 when every target feature has a distinct, clearly closest generated feature (for example
    ``x`` equal to ``y``); about :math:`\log N` when the two sets are far apart.
"""
    + _MATH
    + """
    Args:
        x: features of the generated image.
        y: features of the target image.
"""
    + _ARGS_MATH
    + """        reduction: ``"mean"`` or ``"sum"`` over the batch, or ``"none"``.
"""
    + _ARGS_COMPUTE
    + """
    Shape:
        - x: (B, C, Hx, Wx); y: (B, C, Hy, Wy). Hx * Wx may differ from Hy * Wy.
        - Output: a scalar, or (B,) with ``reduction="none"``.

    Returns:
        The loss, in the dtype of ``x`` (float16/bfloat16 are computed in float32).

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
)


class ContextualLoss(nn.Module):
    """The contextual loss as a module; ``forward(x, y)`` calls :func:`contextual_loss`.

    Args:
        band_width: h > 0 of Eq. 3.
        eps: epsilon > 0 of Eq. 2.
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
    ) -> None:
        super().__init__()
        settings = check_settings(
            band_width, eps, distance, implementation, block_size, sample_positions, check_finite
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
        )

    def extra_repr(self) -> str:
        return (
            f"band_width={self.band_width}, eps={self.eps}, distance={self.distance!r}, "
            f"reduction={self.reduction!r}, implementation={self.implementation!r}"
        )


@dataclass(frozen=True)
class ContextualMatrices:
    """Every intermediate of the contextual similarity of one pair of feature maps.

    Rows are the Nx generated positions i, columns the N target positions j, both in
    row-major (H, W) order.

    Attributes:
        mu_y: the target's mean feature, (C,).
        x_points: generated points after centring (and, for the cosine, L2 normalisation), (Nx, C).
        y_points: target points, prepared the same way, (N, C).
        distance: d_ij, (Nx, N).
        relative_distance: d~_ij of Eq. 2, (Nx, N).
        weights: w_ij of Eq. 3, (Nx, N); may overflow to inf for h < 1/88 in float32 (the
            similarity below never does).
        similarity: CX_ij of Eq. 4, (Nx, N); each row sums to 1.
        best_match: for each target position j, the generated position i of largest CX_ij, (N,).
        best_similarity: max_i CX_ij for each j, (N,).
        score: CX(X, Y), a 0-D tensor.
        loss: -log CX(X, Y), a 0-D tensor.
    """

    mu_y: torch.Tensor
    x_points: torch.Tensor
    y_points: torch.Tensor
    distance: torch.Tensor
    relative_distance: torch.Tensor
    weights: torch.Tensor
    similarity: torch.Tensor
    best_match: torch.Tensor
    best_similarity: torch.Tensor
    score: torch.Tensor
    loss: torch.Tensor


def contextual_matrices(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    band_width: float = 0.5,
    eps: float = 1e-5,
    distance: str = "cosine",
) -> ContextualMatrices:
    """Every intermediate of steps 1-6 for one sample, for pictures and for teaching.

    Holds full (Nx, N) matrices: meant for small maps.

    Args:
        x: generated features, (C, Hx, Wx) or (1, C, Hx, Wx).
        y: target features, (C, Hy, Wy) or (1, C, Hy, Wy).
        band_width: h > 0 of Eq. 3.
        eps: epsilon > 0 of Eq. 2.
        distance: ``"cosine"``, ``"l2"`` or ``"l1"``.

    Returns:
        A :class:`ContextualMatrices`; its ``score`` equals :func:`contextual_similarity`.

    Example:
        >>> import torch, cxlib
        >>> y = torch.randn(4, 3, 3)
        >>> m = cxlib.contextual_matrices(y, y)
        >>> m.best_match.tolist()
        [0, 1, 2, 3, 4, 5, 6, 7, 8]
    """
    settings = check_settings(band_width, eps, distance, "full", None, None)
    x, y = (t.unsqueeze(0) if isinstance(t, torch.Tensor) and t.dim() == 3 else t for t in (x, y))
    x, y = check_feature_pair(x, y)
    if x.shape[0] != 1:
        raise ValueError(
            f"contextual_matrices takes one sample: expected (C, H, W) or (1, C, H, W), "
            f"got x {tuple(x.shape)}"
        )
    x_raw, y_raw = as_point_sets(x), as_point_sets(y)
    x_points, y_points = prepare_points(settings.distance, x_raw, y_raw)
    dist = pairwise_distance(settings.distance, x_points, y_points)[0]
    relative = relative_distance(dist, settings.eps)
    logits = similarity_logits(relative, settings.band_width)
    similarity = torch.softmax(logits, dim=-1)
    best_similarity, best_match = similarity.max(dim=0)
    score = best_similarity.mean()
    return ContextualMatrices(
        mu_y=y_raw[0].mean(dim=0),
        x_points=x_points[0],
        y_points=y_points[0],
        distance=dist,
        relative_distance=relative,
        weights=torch.exp(logits),
        similarity=similarity,
        best_match=best_match,
        best_similarity=best_similarity,
        score=score,
        loss=-torch.log(score),
    )
