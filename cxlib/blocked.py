"""The contextual similarity computed in blocks of rows, with O(block x N) memory.

Steps 2-4 (relative distance, weights, softmax over the target points k) only look at one row i
of the distance matrix at a time, and the max over i of Eq. 5 can be accumulated block by block.
So the forward pass walks over blocks of rows of the (Nx, N) matrix and keeps, per row, three
numbers (its minimum distance, where that minimum is, and the log of the softmax normaliser), and
per target point j two (the best CX_ij so far and its row i). Nothing of size Nx x N survives a
block.

The backward pass walks over the same blocks, recomputes the block's distances, rebuilds CX_ij
from the saved row statistics, and pushes the gradient through by hand:

- only the best row of each column receives gradient from the max of Eq. 5;
- through the softmax: dlogit_ik = CX_ik (g_ik - sum_j g_ij CX_ij);
- through Eq. 2, including the path through the row minimum, which routes to the argmin;
- through the distance itself with autograd on the recomputed block (two matmuls for cosine/L2).

Values and gradients equal the full path's up to floating-point rounding.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .distances import pairwise_distance
from .similarity import row_denominator

__all__ = ["blocked_similarity", "default_block_rows"]

#: Numbers in one (B, rows, N) block that the automatic block size aims for, per device type:
#: 8 MiB of float32 on the CPU (fits the caches better than bigger blocks, measured fastest
#: there), 64 MiB on a GPU (big enough to keep it busy).
BLOCK_ELEMENTS = {"cpu": 1 << 21, "cuda": 1 << 24}


def default_block_rows(batch: int, num_x: int, num_y: int, device: torch.device) -> int:
    """Rows per block so that a block holds about :data:`BLOCK_ELEMENTS` numbers."""
    budget = BLOCK_ELEMENTS.get(device.type, BLOCK_ELEMENTS["cpu"])
    return max(1, min(num_x, budget // max(1, batch * num_y)))


class _BlockedSimilarity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_points, y_points, distance, band_width, eps, block_rows):
        batch, num_x, _ = x_points.shape
        num_y = y_points.shape[1]
        best = x_points.new_full((batch, num_y), -1.0)
        best_row = torch.zeros(batch, num_y, dtype=torch.long, device=x_points.device)
        row_min = x_points.new_empty(batch, num_x, 1)
        row_argmin = torch.empty(batch, num_x, 1, dtype=torch.long, device=x_points.device)
        row_lse = x_points.new_empty(batch, num_x, 1)

        for start in range(0, num_x, block_rows):
            stop = min(start + block_rows, num_x)
            dist = pairwise_distance(distance, x_points[:, start:stop], y_points)
            minimum, argmin = dist.min(dim=-1, keepdim=True)
            # (1 - d / denom) / h, in place: one block alive at a time.
            logits = dist.div_(row_denominator(minimum, eps)).neg_().add_(1.0).div_(band_width)
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)
            cx = logits.sub_(lse).exp_()
            block_best, block_row = cx.max(dim=1)
            # Strictly greater: on ties the earlier row keeps the column, as a single max would.
            better = block_best > best
            best = torch.where(better, block_best, best)
            best_row = torch.where(better, block_row + start, best_row)
            row_min[:, start:stop] = minimum
            row_argmin[:, start:stop] = argmin
            row_lse[:, start:stop] = lse

        ctx.save_for_backward(x_points, y_points, row_min, row_argmin, row_lse, best_row)
        ctx.settings = (distance, band_width, eps, block_rows)
        return best.mean(dim=-1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_score):
        x_points, y_points, row_min, row_argmin, row_lse, best_row = ctx.saved_tensors
        distance, band_width, eps, block_rows = ctx.settings
        num_x, num_y = x_points.shape[1], y_points.shape[1]
        # d score / d best_j = 1/N for every column j.
        grad_best = (grad_score / num_y).unsqueeze(-1).expand(-1, num_y)
        grad_x = torch.zeros_like(x_points)
        grad_y = torch.zeros_like(y_points)
        tiny = torch.finfo(row_min.dtype).tiny

        for start in range(0, num_x, block_rows):
            stop = min(start + block_rows, num_x)
            rows = stop - start
            with torch.enable_grad():
                x_block = x_points[:, start:stop].detach().requires_grad_()
                y_all = y_points.detach().requires_grad_()
                dist = pairwise_distance(distance, x_block, y_all)
            with torch.no_grad():
                minimum = row_min[:, start:stop]
                denominator = row_denominator(minimum, eps)
                logits = torch.div(dist, denominator).neg_().add_(1.0).div_(band_width)
                cx = logits.sub_(row_lse[:, start:stop]).exp_()

                # The gradient reaching CX_ij is g_j on the best row of column j, zero elsewhere;
                # kept sparse, as one (row, g_j) pair per column.
                local_row = best_row - start
                in_block = (local_row >= 0) & (local_row < rows)
                local_row = local_row.clamp(0, rows - 1).unsqueeze(1)
                grad_best_here = (grad_best * in_block).unsqueeze(1)
                cx_best = cx.gather(1, local_row)
                # Softmax backward: dlogit_ik = CX_ik (g_ik - sum_j g_ij CX_ij).
                row_dot = torch.zeros_like(minimum).squeeze(-1)
                row_dot.scatter_add_(1, local_row.squeeze(1), (grad_best_here * cx_best).squeeze(1))
                grad_logits = cx.mul_(-row_dot.unsqueeze(-1))
                grad_logits.scatter_add_(1, local_row, cx_best * grad_best_here)
                # logit = (1 - d / denom) / h, so dlogit/ddenom = d / (h denom^2).
                grad_denominator = torch.matmul(grad_logits.unsqueeze(-2), dist.unsqueeze(-1))
                grad_denominator = grad_denominator.squeeze(-1) / (band_width * denominator.square())
                # denom = max(min_k d_ik + eps, tiny); the min routes to its argmin.
                grad_denominator *= (minimum + eps) > tiny
                grad_dist = grad_logits.div_(-band_width * denominator)
                grad_dist.scatter_add_(-1, row_argmin[:, start:stop], grad_denominator)
            gx, gy = torch.autograd.grad(dist, (x_block, y_all), grad_dist)
            grad_x[:, start:stop] = gx
            grad_y += gy

        return grad_x, grad_y, None, None, None, None


def blocked_similarity(
    x_points: torch.Tensor,
    y_points: torch.Tensor,
    *,
    distance: str,
    band_width: float,
    eps: float,
    block_rows: int | None = None,
) -> torch.Tensor:
    """CX(X, Y) per sample, (B,), from prepared point sets (B, Nx, C) and (B, N, C), in blocks.

    Args:
        x_points: prepared generated points (see :func:`cxlib.distances.prepare_points`).
        y_points: prepared target points.
        distance: one of ``"cosine"``, ``"l2"``, ``"l1"``.
        band_width: h of Eq. 3.
        eps: eps of Eq. 2.
        block_rows: rows of the (Nx, N) matrix per block; ``None`` picks
            :func:`default_block_rows`.
    """
    if block_rows is None:
        batch, num_x, num_y = x_points.shape[0], x_points.shape[1], y_points.shape[1]
        block_rows = default_block_rows(batch, num_x, num_y, x_points.device)
    return _BlockedSimilarity.apply(x_points, y_points, distance, band_width, eps, block_rows)
