"""Which path computes CX(X, Y): the full matrices, blocks of rows, or the fused kernels.

``"auto"`` chooses by the stored GPU measurements where they cover the card
(:mod:`cxlib.contextual.measured`), and by the size of the problem elsewhere. The fused path's
module loads Triton, so it is imported only when that path is asked for or "auto" considers it
on CUDA.
"""

from __future__ import annotations

import functools

import torch

from .blocked import blocked_similarity
from .full import Term, full_similarity
from .measured import (MEASURED_DISTANCES, MeasuredSize, device_class, full_fits,
                       fused_kernels_hash, load_table, measured_choice)
from .settings import Settings

__all__ = ["AUTO_FULL_MAX_ELEMENTS", "AUTO_USES_FUSED", "score_terms"]

#: Without a measurement for the device (the CPU, a card no stored record covers), ``"auto"``
#: uses the full path while B * Nx * N is at most this (a 16 MiB float32 matrix).
AUTO_FULL_MAX_ELEMENTS = 1 << 22
#: Whether ``"auto"`` may take the fused Triton kernels on a CUDA card that no stored record
#: covers. Off: without a measurement on the card there is no reason to prefer them. Where a
#: record covers the card, the measurements decide (:mod:`cxlib.contextual.measured`). Either
#: way the kernels are first checked on the device (see :mod:`cxlib.contextual.fused_check`) and
#: "auto" falls back if they fail.
AUTO_USES_FUSED = False


def _auto_fused_device(device: torch.device) -> bool:
    """Where "auto" may consider the fused kernels: CUDA devices (never Triton's interpreter)."""
    if device.type != "cuda":
        return False
    from .fused import fused_available

    return fused_available(device)


def _device_measurements(device: torch.device) -> tuple[tuple[MeasuredSize, ...], int] | None:
    """The stored measurements of this device's class and its memory in bytes; ``None`` on the
    CPU and on cards that no record covers."""
    if device.type != "cuda":
        return None
    properties = torch.cuda.get_device_properties(device)
    sizes = load_table().get(device_class(properties.name))
    return None if not sizes else (sizes, properties.total_memory)


def _fused_passes(terms: list[Term], settings: Settings) -> bool:
    """Whether the fused kernels can compute these terms here and passed their device check."""
    x_points, y_points = terms[0].x_points, terms[0].y_points
    if not (len(terms) == 1 and settings.block_size is None and x_points.dtype != torch.float64
            and _auto_fused_device(x_points.device)):
        return False
    from .fused import FUSED_DISTANCES, fits_fused
    from .fused_check import fused_verdict

    return (terms[0].distance in FUSED_DISTANCES and fits_fused(x_points.shape, y_points.shape)
            and fused_verdict(x_points.device, terms[0].distance, x_points.dtype) is None)


def _auto_implementation(terms: list[Term], settings: Settings) -> str:
    x_points, y_points = terms[0].x_points, terms[0].y_points
    batch, num_x, num_y = x_points.shape[0], x_points.shape[1], y_points.shape[1]
    if settings.block_size is not None:
        return "blocked"
    measured = _device_measurements(x_points.device)
    if measured is not None and all(term.distance in MEASURED_DISTANCES for term in terms):
        sizes, memory = measured
        allowed = {"blocked", "fused"}
        if full_fits(batch, num_x, num_y, memory, bytes_per_entry=x_points.element_size(),
                     terms=len(terms)):
            allowed.add("full")
        channels = sum(term.x_points.shape[-1] for term in terms)
        choose = functools.partial(measured_choice, sizes, batch=batch, num_x=num_x, num_y=num_y,
                                   channels=channels, kernels=fused_kernels_hash())
        choice = choose(allowed=allowed)
        if choice == "fused" and not _fused_passes(terms, settings):
            choice = choose(allowed=allowed - {"fused"})
        if choice is not None:
            return choice
    if AUTO_USES_FUSED and _fused_passes(terms, settings):
        return "fused"
    return "full" if batch * num_x * num_y <= AUTO_FULL_MAX_ELEMENTS else "blocked"


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
