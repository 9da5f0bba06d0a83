"""The contextual similarity computed in blocks of rows, with O(block x N) memory.

Steps 2-4 (relative distance, weights, softmax over the target points k) only look at one row i
of the distance matrix at a time, and the max over i of Eq. 1 can be accumulated block by block.
So the forward pass walks over blocks of rows of the (Nx, N) matrix and keeps, per row, three
numbers (its minimum distance, where that minimum is, and the log of the softmax normaliser), and
per target point j two (the best CX_ij so far and its row i). Nothing of size Nx x N survives a
block.

The backward pass walks over the same blocks, recomputes the block's distances, rebuilds CX_ij
from the saved row statistics, and pushes the gradient through by hand:

- only the best row of each column receives gradient from the max of Eq. 1;
- through the softmax: dlogit_ik = CX_ik (g_ik - sum_j g_ij CX_ij);
- through Eq. 2, including the path through the row minimum, which routes to the argmin;
- through the distance itself with autograd on the recomputed block (two matmuls for cosine/L2).

Several terms over the same (i, j) grid (the feature and spatial terms of the contextual
bilateral loss) are mixed block by block, CX_ij = sum_t weight_t CX^t_ij, each term keeping its
own row statistics. Values and gradients equal the full path's up to floating-point rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch.autograd.function import once_differentiable

from .distances import pairwise_distance
from .full import Term, row_denominator

__all__ = ["blocked_similarity", "default_block_size"]

#: Numbers in one (B, rows, N) block that the automatic block size aims for, per device type:
#: 8 MiB of float32 on the CPU (fits the caches better than bigger blocks, measured fastest
#: there), 64 MiB on a GPU (big enough to keep it busy).
BLOCK_ELEMENTS = {"cpu": 1 << 21, "cuda": 1 << 24}


def default_block_size(batch: int, num_x: int, num_y: int, device: torch.device) -> int:
    """Rows per block so that a block holds about :data:`BLOCK_ELEMENTS` numbers."""
    budget = BLOCK_ELEMENTS.get(device.type, BLOCK_ELEMENTS["cpu"])
    return max(1, min(num_x, budget // max(1, batch * num_y)))


def _term_cx(
    x_block: torch.Tensor, y_points: torch.Tensor, distance: str, band_width: float, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """CX^t for a block of rows, with the row statistics the backward needs."""
    dist = pairwise_distance(distance, x_block, y_points)
    minimum, argmin = dist.min(dim=-1, keepdim=True)
    # (1 - d / denom) / h, in place: one block alive at a time.
    logits = dist.div_(row_denominator(minimum, eps)).neg_().add_(1.0).div_(band_width)
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    return logits.sub_(lse).exp_(), minimum, argmin, lse


def _term_backward(
    x_block: torch.Tensor, y_points: torch.Tensor, distance: str, band_width: float, eps: float,
    stats: tuple[torch.Tensor, ...], local_row: torch.Tensor, grad_best: torch.Tensor,
    needs_grad: Sequence[bool],
) -> tuple[torch.Tensor | None, ...]:
    """Gradients of one term's points for one block, given the gradient reaching CX^t_ij.

    ``grad_best`` (B, 1, N) is the gradient of column j's max, already scaled by the term's
    weight; it reaches only row ``local_row`` (B, 1, N) of each column (zero where the best row
    lies outside this block). ``needs_grad`` says which of (x, y) want a gradient; the others
    get ``None``.
    """
    minimum, argmin, lse = stats
    with torch.enable_grad():
        x_block = x_block.detach().requires_grad_(needs_grad[0])
        y_all = y_points.detach().requires_grad_(needs_grad[1])
        dist = pairwise_distance(distance, x_block, y_all)
    with torch.no_grad():
        denominator = row_denominator(minimum, eps)
        relative = dist / denominator
        cx = relative.neg().add_(1.0).div_(band_width).sub_(lse).exp_()
        cx_best = cx.gather(1, local_row)
        # Softmax backward: dlogit_ik = CX_ik (g_ik - sum_j g_ij CX_ij), with g sparse.
        row_dot = torch.zeros_like(minimum).squeeze(-1)
        row_dot.scatter_add_(1, local_row.squeeze(1), (grad_best * cx_best).squeeze(1))
        grad_logits = cx.mul_(-row_dot.unsqueeze(-1))
        grad_logits.scatter_add_(1, local_row, cx_best * grad_best)
        # logit = (1 - d / denom) / h, so dlogit/ddenom = (d / denom) / (h denom): written with
        # the relative distance so that a tiny eps does not underflow denom^2 to 0.
        grad_denominator = torch.matmul(grad_logits.unsqueeze(-2), relative.unsqueeze(-1))
        grad_denominator = grad_denominator.squeeze(-1) / (band_width * denominator)
        # denom = max(min_k d_ik, 0) + eps; the min routes to its argmin unless clamped (the
        # full path's autograd through clamp_min passes the gradient at exactly 0 too).
        grad_denominator = torch.where(minimum >= 0, grad_denominator, 0.0)
        grad_dist = grad_logits.div_(-band_width * denominator)
        grad_dist.scatter_add_(-1, argmin, grad_denominator)
    wanted = [p for p, needed in zip((x_block, y_all), needs_grad) if needed]
    found = iter(torch.autograd.grad(dist, wanted, grad_dist))
    return tuple(next(found) if needed else None for needed in needs_grad)


class _BlockedSimilarity(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, settings: tuple[Any, ...], *points: torch.Tensor) -> torch.Tensor:
        distances, weights, band_width, term_eps, block_size = settings
        x_first = points[0]
        batch, num_x = x_first.shape[:2]
        num_y = points[1].shape[1]
        best = x_first.new_full((batch, num_y), -1.0)
        best_row = torch.zeros(batch, num_y, dtype=torch.long, device=x_first.device)
        # Per term and row: min_k d_ik, its argmin, and the log of the softmax normaliser.
        stats = [
            (x_first.new_empty(batch, num_x, 1),
             torch.empty(batch, num_x, 1, dtype=torch.long, device=x_first.device),
             x_first.new_empty(batch, num_x, 1))
            for _ in distances
        ]

        for start in range(0, num_x, block_size):
            stop = min(start + block_size, num_x)
            mixed: torch.Tensor | None = None
            for t, (distance, weight, eps) in enumerate(zip(distances, weights, term_eps)):
                x_points, y_points = points[2 * t], points[2 * t + 1]
                cx, minimum, argmin, lse = _term_cx(
                    x_points[:, start:stop], y_points, distance, band_width, eps
                )
                for saved, value in zip(stats[t], (minimum, argmin, lse)):
                    saved[:, start:stop] = value
                mixed = cx.mul_(weight) if mixed is None else mixed.add_(cx, alpha=weight)
            assert mixed is not None  # there is at least one term
            block_best, block_row = mixed.max(dim=1)
            # Strictly greater: on ties the earlier row keeps the column, as a single max would.
            better = block_best > best
            best = torch.where(better, block_best, best)
            best_row = torch.where(better, block_row + start, best_row)

        ctx.save_for_backward(best_row, *points, *(s for term in stats for s in term))
        ctx.settings = settings
        return best.mean(dim=-1)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_score: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        distances, weights, band_width, term_eps, block_size = ctx.settings
        best_row, *saved = ctx.saved_tensors
        num_terms = len(distances)
        points, flat_stats = saved[: 2 * num_terms], saved[2 * num_terms :]
        num_x, num_y = points[0].shape[1], points[1].shape[1]
        # d score / d best_j = 1/N for every column j.
        grad_best = (grad_score / num_y).unsqueeze(-1).expand(-1, num_y)
        needs = ctx.needs_input_grad[1:]
        grads: list[torch.Tensor | None] = [
            torch.zeros_like(p) if needed else None for p, needed in zip(points, needs)
        ]

        for start in range(0, num_x, block_size):
            stop = min(start + block_size, num_x)
            rows = stop - start
            local_row = best_row - start
            in_block = (local_row >= 0) & (local_row < rows)
            local_row = local_row.clamp(0, rows - 1).unsqueeze(1)
            grad_best_here = (grad_best * in_block).unsqueeze(1)
            for t, (distance, weight, eps) in enumerate(zip(distances, weights, term_eps)):
                term_needs = needs[2 * t : 2 * t + 2]
                if not any(term_needs):
                    continue
                stats = tuple(s[:, start:stop] for s in flat_stats[3 * t : 3 * t + 3])
                gx, gy = _term_backward(
                    points[2 * t][:, start:stop], points[2 * t + 1], distance, band_width, eps,
                    stats, local_row, grad_best_here * weight, term_needs,
                )
                grad_x, grad_y = grads[2 * t], grads[2 * t + 1]
                if gx is not None and grad_x is not None:
                    grad_x[:, start:stop] = gx
                if gy is not None and grad_y is not None:
                    grad_y += gy

        return (None, *grads)


def blocked_similarity(
    terms: Sequence[Term],
    *,
    band_width: float,
    eps: float,
    block_size: int | None = None,
) -> torch.Tensor:
    """CX(X, Y) per sample, (B,), of the weighted mix of ``terms``, computed in blocks of rows.

    Args:
        terms: the comparisons whose CX_ij are mixed (see :class:`cxlib.contextual.full.Term`); all
            share the same Nx generated and N target positions.
        band_width: h of Eq. 3.
        eps: eps of Eq. 2, for the terms that have none of their own.
        block_size: rows of the (Nx, N) matrix per block; ``None`` picks
            :func:`default_block_size`.
    """
    x_points, y_points = terms[0].x_points, terms[0].y_points
    if block_size is None:
        batch, num_x, num_y = x_points.shape[0], x_points.shape[1], y_points.shape[1]
        block_size = default_block_size(batch, num_x, num_y, x_points.device)
    settings = (
        tuple(t.distance for t in terms), tuple(t.weight for t in terms), band_width,
        tuple(t.eps_or(eps) for t in terms), block_size,
    )
    flat = [p for t in terms for p in (t.x_points, t.y_points)]
    return cast(torch.Tensor, _BlockedSimilarity.apply(settings, *flat))
