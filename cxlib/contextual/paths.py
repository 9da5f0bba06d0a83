"""Which path computes CX(X, Y): the full matrices, blocks of rows, or the fused kernels.

The fused path's module loads Triton, so it is imported only when that path is asked for (or
when "auto" may consider it, on CUDA with :data:`AUTO_USES_FUSED`).
"""

from __future__ import annotations

import torch

from .blocked import blocked_similarity
from .full import Term, full_similarity
from .settings import Settings

__all__ = ["AUTO_FULL_MAX_ELEMENTS", "AUTO_USES_FUSED", "score_terms"]

#: ``"auto"`` uses the full path while B * Nx * N is at most this (a 16 MiB float32 matrix).
AUTO_FULL_MAX_ELEMENTS = 1 << 22
#: Whether ``"auto"`` may take the fused Triton kernels on CUDA. Off until a GPU benchmark shows
#: them faster than the blocked path on cuBLAS (``python -m cxlib.gpu_check`` measures both).
#: When on, the kernels are first checked on the device against the blocked path (see
#: :mod:`cxlib.contextual.fused_check`) and "auto" falls back to the blocked path if they fail.
AUTO_USES_FUSED = False


def _auto_fused_device(device: torch.device) -> bool:
    """Where "auto" may consider the fused kernels: CUDA devices (never Triton's interpreter)."""
    if device.type != "cuda":
        return False
    from .fused import fused_available

    return fused_available(device)


def _auto_implementation(terms: list[Term], settings: Settings) -> str:
    x_points, y_points = terms[0].x_points, terms[0].y_points
    batch, num_x, num_y = x_points.shape[0], x_points.shape[1], y_points.shape[1]
    if (AUTO_USES_FUSED and len(terms) == 1 and settings.block_size is None
            and x_points.dtype != torch.float64 and _auto_fused_device(x_points.device)):
        from .fused import FUSED_DISTANCES, fits_fused
        from .fused_check import fused_verdict

        if (terms[0].distance in FUSED_DISTANCES and fits_fused(x_points.shape, y_points.shape)
                and fused_verdict(x_points.device, terms[0].distance, x_points.dtype) is None):
            return "fused"
    full_fits = batch * num_x * num_y <= AUTO_FULL_MAX_ELEMENTS
    return "full" if full_fits and settings.block_size is None else "blocked"


def _check_fused_applies(terms: list[Term]) -> None:
    from .fused import FUSED_DISTANCES, check_fused_size, fused_available

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
    """CX(X, Y) per sample of the mixed terms, on the path ``settings.implementation`` names.

    Args:
        terms: the comparisons mixed into CX_ij (one for the contextual loss; a feature and a
            spatial one for CoBi), on prepared points.
        settings: the checked hyper-parameters; ``"auto"`` is resolved here.

    Shape:
        - Each term's points: (B, Nx, C_t) and (B, N, C_t).
        - Output: (B,).

    Returns:
        CX(X, Y) per sample, in the points' dtype.

    Example:
        >>> import torch
        >>> from cxlib.contextual.full import Term
        >>> from cxlib.contextual.paths import score_terms
        >>> from cxlib.contextual.settings import check_settings
        >>> p = torch.nn.functional.normalize(torch.randn(1, 5, 3), dim=-1)
        >>> score_terms([Term(p, p, "cosine")], check_settings(0.5, 1e-5, "cosine", "full", None, None))
        tensor([1.])
    """
    implementation = settings.implementation
    if implementation == "auto":
        implementation = _auto_implementation(terms, settings)
    if implementation == "fused":
        _check_fused_applies(terms)
        from .fused import fused_similarity

        term = terms[0]
        score = fused_similarity(term.x_points, term.y_points, distance=term.distance,
                                 band_width=settings.band_width, eps=term.eps_or(settings.eps))
        return score.to(term.x_points.dtype)
    if implementation == "full":
        return full_similarity(terms, settings.band_width, settings.eps)
    return blocked_similarity(
        terms, band_width=settings.band_width, eps=settings.eps, block_size=settings.block_size
    )
