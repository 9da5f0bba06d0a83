"""The ``reduction=`` argument shared by every loss: over the batch, or one value per sample."""

from __future__ import annotations

import torch

from ._checks import check_choice

__all__ = ["REDUCTIONS", "reduce_batch"]

#: Values of ``reduction=``.
REDUCTIONS = ("mean", "sum", "none")


def reduce_batch(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce per-sample values (B,) by ``"mean"``, ``"sum"`` or ``"none"``."""
    reduction = check_choice("reduction", reduction, REDUCTIONS)
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample
