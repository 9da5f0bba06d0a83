"""A check of the fused kernels on the device itself before ``implementation="auto"`` uses them.

The Triton kernels compile on the reader's machine, for the reader's GPU, with the reader's
Triton: a compiler bug or an unsupported card must not break a training run, nor silently give
wrong gradients. So before "auto" first takes the fused path on a device (once per process, per
device, distance and dtype), :func:`fused_verdict` computes a small problem with the fused kernels
and with the blocked path in float64, and compares values and gradients with the tolerances of
the test suite. If the kernels fail to compile or run, or disagree, it warns once
(:class:`FusedFallbackWarning`, with the reason) and "auto" uses another path from then on (the
blocked one, or the full one where the stored measurements favour it).
An explicit ``implementation="fused"`` is not checked and raises as it is.
"""

from __future__ import annotations

import warnings

import torch

from .blocked import blocked_similarity
from .distances import as_point_sets, prepare_points
from .full import Term, full_similarity

__all__ = ["FusedFallbackWarning", "fused_verdict", "reset_fused_verdicts", "value_and_gradients"]

#: Tolerances of the check, as in tests/test_fused.py: values against a float64 reference, and
#: gradients relative to the largest gradient entry.
VALUE_RTOL = 1e-5
GRAD_RTOL = 1e-4

# (device, distance, dtype) -> None when the fused kernels passed, else why they did not.
_verdicts: dict[tuple[str, str, str], str | None] = {}


class FusedFallbackWarning(UserWarning):
    """The fused kernels failed their check on this device: "auto" uses another path."""


def reset_fused_verdicts() -> None:
    """Forget every verdict (the next "auto" call checks again)."""
    _verdicts.clear()


def _problem(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature maps whose sizes are not multiples of the kernels' tiles (64 positions, 32
    channels), from a private generator (the global random state is not touched)."""
    generator = torch.Generator().manual_seed(20181)
    x = torch.randn(2, 70, 9, 11, generator=generator)
    y = torch.randn(2, 70, 8, 10, generator=generator)
    return x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype)


def value_and_gradients(x: torch.Tensor, y: torch.Tensor, distance: str, implementation: str,
                        *, band_width: float = 0.3, eps: float = 1e-5,
                        ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """CX(X, Y) per sample on one path, and its gradients with respect to x and y, for a fixed,
    uneven weighting of the samples (so that a wrong per-sample gradient cannot hide in a sum).

    Works on the paths' own functions, below the public API (which chooses among them).

    Args:
        x: generated features.
        y: target features.
        distance: ``"cosine"`` or ``"l2"`` (and ``"l1"`` off the fused path).
        implementation: ``"full"``, ``"blocked"`` or ``"fused"``.
        band_width: h.
        eps: epsilon of Eq. 2.

    Shape:
        - x: (B, C, Hx, Wx); y: (B, C, Hy, Wy).
        - Output: the values (B,) and the gradients, shaped as x and y.

    Returns:
        ``(value, (grad_x, grad_y))``, all detached.

    Example:
        >>> import torch
        >>> from cxlib.contextual.fused_check import value_and_gradients
        >>> x, y = torch.randn(2, 4, 3, 3, dtype=torch.float64), torch.randn(2, 4, 3, 3, dtype=torch.float64)
        >>> full = value_and_gradients(x, y, "cosine", "full")
        >>> blocked = value_and_gradients(x, y, "cosine", "blocked")
        >>> bool(torch.allclose(full[1][0], blocked[1][0]))
        True
    """
    x = x.detach().requires_grad_()
    y = y.detach().requires_grad_()
    x_points, y_points = prepare_points(distance, as_point_sets(x), as_point_sets(y))
    if implementation == "fused":
        from .fused import fused_similarity

        value = fused_similarity(x_points, y_points, distance=distance, band_width=band_width,
                                 eps=eps).to(x.dtype)
    elif implementation == "blocked":
        value = blocked_similarity([Term(x_points, y_points, distance)], band_width=band_width,
                                   eps=eps)
    elif implementation == "full":
        value = full_similarity([Term(x_points, y_points, distance)], band_width, eps)
    else:
        raise ValueError(f"implementation must be 'full', 'blocked' or 'fused', got {implementation!r}")
    upstream = torch.linspace(1.0, -0.5, value.shape[0], device=value.device, dtype=value.dtype)
    grads = torch.autograd.grad(value, (x, y), upstream)
    return value.detach(), grads


def _disagreement(device: torch.device, distance: str, dtype: torch.dtype) -> str | None:
    """Why the fused kernels cannot be trusted here, or None if they passed."""
    x, y = _problem(device, dtype)
    try:
        value, grads = value_and_gradients(x, y, distance, "fused")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as error:  # noqa: BLE001 - any failure means: do not use them
        return f"they failed to compile or run ({type(error).__name__}: {error})"
    want_value, want_grads = value_and_gradients(x.double(), y.double(), distance, "blocked")
    value_error = ((value.double() - want_value).abs() / want_value.abs()).max().item()
    grad_errors = []
    for got, want in zip(grads, want_grads):
        scale = want.abs().max().item()
        excess = (got.double() - want).abs() - GRAD_RTOL * (want.abs() + scale)
        grad_errors.append(((got.double() - want).abs().max().item() / scale, excess.max().item()))
    finite = bool(torch.isfinite(value).all()) and all(bool(torch.isfinite(g).all()) for g in grads)
    if not finite or value_error > VALUE_RTOL or any(excess > 0 for _, excess in grad_errors):
        worst_grad = max(error for error, _ in grad_errors)
        return (
            "they disagree with the blocked path on a test problem (largest relative error of "
            f"the value {value_error:.2e}, tolerance {VALUE_RTOL:.0e}; of the gradients "
            f"{worst_grad:.2e}, tolerance {GRAD_RTOL:.0e})"
        )
    return None


def fused_verdict(device: torch.device | str, distance: str, dtype: torch.dtype) -> str | None:
    """``None`` if the fused kernels passed their check on ``device``, else the reason they did
    not; checked once per process for each (device, distance, dtype), with a
    :class:`FusedFallbackWarning` the first time they fail.

    The check runs with gradients enabled and autocast disabled, whatever the caller's context
    (``torch.no_grad``, ``torch.inference_mode``, an autocast region).
    """
    device = torch.device(device)
    key = (str(device), distance, str(dtype))
    if key not in _verdicts:
        with (torch.inference_mode(False), torch.enable_grad(),
              torch.autocast(device_type=device.type, enabled=False)):
            reason = _disagreement(device, distance, dtype)
        _verdicts[key] = reason
        if reason is not None:
            warnings.warn(
                f"cxlib: the fused contextual-loss kernels are not used on {device} "
                f"(distance={distance!r}, {dtype}): {reason}. implementation='auto' uses the "
                "blocked or full path instead (the same values and gradients, in more memory).",
                FusedFallbackWarning,
                stacklevel=2,
            )
    return _verdicts[key]
