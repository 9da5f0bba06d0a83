"""The one precision rule of the contextual loss: half-precision features are computed in float32.

Eq. 2 divides every distance by its row's smallest one plus eps (1e-5): in float16 (10-bit
mantissa) or bfloat16 (7-bit) the small minimum of a near match rounds to 0 or to a neighbour,
and the relative distances, hence the split of CX between near targets, are decided by
rounding. So float16 and bfloat16 features are cast to float32 before anything is computed
(inside a caller's autocast region too, see :func:`cxlib.contextual.sampling.outside_autocast`),
and the loss is returned in float32, as autocast's own losses are. float32 and float64 are kept.
"""

from __future__ import annotations

import torch

__all__ = ["HALF_PRECISION", "computation_dtype", "in_computation_dtype"]

#: The dtypes that are computed in float32.
HALF_PRECISION = (torch.float16, torch.bfloat16)


def computation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the loss computes and returns in for features of ``dtype``.

    Example:
        >>> import torch
        >>> from cxlib.contextual.precision import computation_dtype
        >>> computation_dtype(torch.bfloat16), computation_dtype(torch.float64)
        (torch.float32, torch.float64)
    """
    return torch.float32 if dtype in HALF_PRECISION else dtype


def in_computation_dtype(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` and ``y`` cast to their computation dtype (``x``'s decides; the input checks have
    already required the same dtype for both)."""
    dtype = computation_dtype(x.dtype)
    return x.to(dtype), y.to(dtype)
