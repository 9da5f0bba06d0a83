"""The full-matrix path: steps 3 to 6 of the contextual loss on whole (Nx, N) matrices (the
reference; ``implementation="full"``).

Given distances d (B, Nx, N) between generated points x_i and target points y_j:

- Eq. 2, relative distance: d~_ij = d_ij / (min_k d_ik + eps)
- Eq. 3, weight: w_ij = exp((1 - d~_ij) / h)
- Eq. 4, contextual similarity of two points: CX_ij = w_ij / sum_k w_ik
- Eq. 1, of two sets: CX(X, Y) = (1/N) sum_j max_i CX_ij
- Eq. 5, the loss: L_CX = -log CX(X, Y)

(The paper numbers them this way: Eq. 1 defines CX(X, Y) first, Eqs. 2-4 then define CX_ij.)

CX_ij is exactly a softmax over k of the logits (1 - d~_ik) / h, which is how it is computed
here: exp() of the raw logits overflows in float32 for h < 1/88.

A :class:`Term` is one such comparison; several terms over the same (i, j) grid can be mixed
before the max of Eq. 1, CX_ij = sum_t weight_t CX^t_ij, which is how the contextual bilateral
loss adds a spatial term to the feature term.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch

from .distances import pairwise_distance

__all__ = [
    "Term",
    "relative_distance",
    "row_denominator",
    "full_similarity",
    "similarity_logits",
    "similarity_matrix",
]


@dataclass(frozen=True)
class Term:
    """One comparison entering CX_ij: prepared points (B, Nx, C) and (B, N, C), a distance name
    (see :mod:`cxlib.contextual.distances`), the weight of its CX_ij in the mix, and its own eps
    of Eq. 2 (``None``: the call's eps; CoBi's spatial term has its own)."""

    x_points: torch.Tensor
    y_points: torch.Tensor
    distance: str
    weight: float = 1.0
    eps: float | None = None

    def eps_or(self, eps: float) -> float:
        """This term's eps, or ``eps`` where it has none of its own."""
        return eps if self.eps is None else self.eps


def row_denominator(row_min: torch.Tensor, eps: float) -> torch.Tensor:
    """The denominator of Eq. 2, min_k d_ik + eps, with eps > 0.

    A distance is >= 0, but 1 - cos can round to a little below 0 when x_i equals y_k: the
    minimum is taken as 0 then, so the denominator is never below eps.
    """
    return row_min.clamp_min(0.0) + eps


def relative_distance(distance: torch.Tensor, eps: float) -> torch.Tensor:
    """Eq. 2: each distance divided by the smallest one of its row (plus ``eps``)."""
    row_min = distance.min(dim=-1, keepdim=True).values
    return distance / row_denominator(row_min, eps)


def similarity_logits(relative: torch.Tensor, band_width: float) -> torch.Tensor:
    """The exponent of Eq. 3: (1 - d~_ij) / h."""
    return (1.0 - relative) / band_width


def similarity_matrix(distance: torch.Tensor, band_width: float, eps: float) -> torch.Tensor:
    """Eqs. 2-4: CX_ij for every pair, each row summing to 1 over the target points."""
    logits = similarity_logits(relative_distance(distance, eps), band_width)
    return torch.softmax(logits, dim=-1)


def full_similarity(terms: Sequence[Term], band_width: float, eps: float) -> torch.Tensor:
    """Eq. 1 on full matrices: CX(X, Y) per sample, (B,), of the weighted mix of the terms."""
    cx = cast(torch.Tensor, sum(
        term.weight
        * similarity_matrix(pairwise_distance(term.distance, term.x_points, term.y_points),
                            band_width, term.eps_or(eps))
        for term in terms
    ))
    return cx.max(dim=-2).values.mean(dim=-1)
