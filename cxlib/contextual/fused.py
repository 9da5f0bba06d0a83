"""The contextual similarity as fused Triton kernels: O(N) memory, no (Nx, N) matrix ever stored.

Like flash attention, the kernels stream over tiles of the (Nx, N) matrix and recompute the
distances from the points (two matmul-like products per tile) instead of storing them:

- ``_row_stats``: one program per block of rows i. A first pass over the columns finds the row
  minimum m_i = min_k d_ik (and where it is; for l2 before the clamp at 0, see below); then the largest logit of the row is known, it is
  (1 - m_i / (m_i + eps)) / h at the nearest neighbour, so a second pass sums
  exp(logit_ik - max_i) without any rescaling, giving the log of Eq. 4's normaliser.
- ``_column_max``: one program per block of columns j; a pass over the rows rebuilds CX_ij from
  the row statistics and keeps the max over i and its argmax (Eq. 1).
- Backward: the gradient reaching CX_ij is non-zero only at (argmax_j, j). ``_grad_x`` (rows)
  and ``_grad_y`` (columns) stream over tiles, form P_ik = dL/dd_ik through the softmax and
  the max entry by entry, and compute P @ Y and P^T @ X; ``_grad_x`` also sums P_ik d_ik per
  row, the gradient through the row minimum, which PyTorch routes to (i, argmin_i) in O(N).
  Each runs once per block of output channels, recomputing the tiles each time. The opt-in
  ``backward="one-pass"`` (:data:`FUSED_BACKWARDS`) runs ``_grad_rows`` instead: P formed once
  per tile, both products from it (:mod:`.fused_cost` counts either).

Near matches (x_i = y_k, or within float32 rounding of it), which training drives the features
towards, make den = m_i + eps as small as eps, and d / den multiplies any rounding by up to
1 / eps. The backward therefore never subtracts two large numbers after a product: at the best
entries it uses the forward's own best_j (the numbers r_i was summed from), cancels
CX_ik (r_i - g) inside the tile as the full path's softmax backward does, and sums the row
minimum's gradient entry by entry. Every pass computes a tile's distances with the same code on
the same 64 x 64 tiles, and the l2 clamp at a row's minimum is decided in the forward and saved
(m_i < 0), so the forward and backward agree on it.

Everything is float32 and the tile products use IEEE float32 (no TF32): Eq. 2 divides by a
small minimum distance and amplifies rounding. (Three TF32 products, ``precision="tf32x3"``, are
an explicit opt-in of :func:`fused_similarity` whose error is yet to be measured on a GPU; see
:data:`FUSED_PRECISIONS`.) Distances: ``"cosine"`` and ``"l2"``. Unlike the
full and blocked paths, the kernels do not recompute in float64 the l2 rows whose minimum is
within the expansion's own rounding (:data:`cxlib.contextual.distances.L2_REFINE_RATIO`): with
l2 on features of large norm whose nearest targets are tied to within about 1e-7 of
|x|^2 + |y|^2, the split between those targets is decided by rounding here. The cosine distance
has no such case (its points have norm 1).

The kernels run on CUDA; with ``TRITON_INTERPRET=1`` they also run (slowly) on the CPU, which is
how the tests check them. Their launch settings (tile sizes, warps, stages, register cap) come
from ``launch_config``; :mod:`cxlib.contextual.fused_report` (``python -m cxlib.contextual.fused_report``) compiles
every variant for sm_75, sm_80 and sm_90a without a GPU and reads registers and spills from ptxas.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any, cast

import torch
from torch.autograd.function import once_differentiable

__all__ = ["FUSED_BACKWARDS", "FUSED_DISTANCES", "FUSED_PRECISIONS", "KERNELS", "MIN_TRITON", "fused_available",
           "fused_similarity", "kernel_variants", "launch_config"]

#: Distances the fused kernels implement (the others use the blocked path).
FUSED_DISTANCES = ("cosine", "l2")
#: How the kernels' tile products are computed (Triton's ``input_precision``): ``"ieee"``, float32
#: FMA (the default, and the only one "auto" or the loss functions use); ``"tf32x3"``, three TF32
#: products on tensor cores (sm_80 and newer) that come near float32's accuracy. ``"tf32x3"`` is an
#: explicit opt-in of :func:`fused_similarity` alone, until the GPU check (``python -m
#: cxlib.gpu_check``, check ``tf32x3``) has measured its error and speed on a card: Triton's
#: interpreter computes every product in plain float32 whatever is asked, so the tests here cannot
#: see its error. Where the channel count is not a multiple of 16 above 16, on cards before sm_80
#: (no TF32; Triton before 3.2 fails to compile tf32x3 there) and on ROCm, the products stay IEEE
#: whatever is asked.
FUSED_PRECISIONS = ("ieee", "tf32x3")
#: How the backward streams over the tiles: ``"two-kernels"`` (the default, the one the stored
#: benchmarks measured), ``_grad_x`` over the rows and ``_grad_y`` over the columns, each once per
#: block of output channels, so that with more channels than a block holds (64, or 16 with
#: tf32x3) every tile's distances are recomputed once per block and per kernel; ``"one-pass"``,
#: ``_grad_rows``, which forms each tile's dL/dd once and multiplies it by every channel of Y and
#: of X, adding into x's gradient in place and into y's atomically. ``"one-pass"`` is an explicit
#: opt-in of :func:`fused_similarity` until a GPU has timed it (``python -m cxlib.gpu_check``,
#: check ``one-pass``); with y's gradient its atomic adds make that gradient's rounding depend on
#: the order in which the row blocks finish (not bitwise reproducible from run to run).
FUSED_BACKWARDS = ("two-kernels", "one-pass")

#: Oldest Triton the kernels compile with: ``tl.dot(..., input_precision=...)`` came in Triton 3.0
#: (the one torch 2.4 ships).
MIN_TRITON = (3, 0)

try:
    import triton as triton  # re-exported: fused_report reads fused.triton
    import triton.language as tl

    _TRITON_ERROR: Exception | None = None
except ImportError as error:  # pragma: no cover - depends on the environment
    triton = tl = None
    _TRITON_ERROR = error


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _version_tuple(version: str) -> tuple[int, ...]:
    """(3, 2, 0) from "3.2.0", "3.2.0+git1234" or "3.3.0rc1": the leading numbers."""
    numbers = []
    for piece in str(version).split(".")[:3]:
        match = re.match(r"\d+", piece)
        if match is None:
            break
        numbers.append(int(match.group()))
    return tuple(numbers)


def _triton_problem() -> str | None:
    """Why the kernels cannot run with the Triton found here, or None when they can."""
    if triton is None:
        return f"Triton could not be imported ({_TRITON_ERROR})"
    version = getattr(triton, "__version__", "0")
    if _version_tuple(version) < MIN_TRITON:
        return f"the fused kernels need Triton >= {'.'.join(map(str, MIN_TRITON))}, found {version}"
    return None


def fused_available(device: torch.device | str) -> bool:
    """Whether the fused kernels can run on ``device``: Triton >= 3.0 importable, and a CUDA
    device (or any device under ``TRITON_INTERPRET=1``)."""
    if _triton_problem() is not None:
        return False
    return torch.device(device).type == "cuda" or _interpreting()


if triton is not None:

    @triton.jit
    def _tile_raw_distance(X, Y, XN, YN, b, rows, cols, row_ok, col_ok, C,
                           sxb, sxn, sxc, syb, syn, syc,
                           IS_L2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_C: tl.constexpr, PRECISION: tl.constexpr):
        """d for a (BLOCK_M, BLOCK_N) tile before l2's clamp: |x|^2 + |y|^2 - 2 x.y (which
        rounding can take below 0), or 1 - x.y."""
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            ch = c0 + tl.arange(0, BLOCK_C)
            ch_ok = ch < C
            x = tl.load(X + b * sxb + rows[:, None] * sxn + ch[None, :] * sxc,
                        mask=row_ok[:, None] & ch_ok[None, :], other=0.0)
            y = tl.load(Y + b * syb + cols[:, None] * syn + ch[None, :] * syc,
                        mask=col_ok[:, None] & ch_ok[None, :], other=0.0)
            acc += tl.dot(x, tl.trans(y), input_precision=PRECISION)
        if IS_L2:
            xn = tl.load(XN + rows, mask=row_ok, other=0.0)  # XN, YN: this sample's norms
            yn = tl.load(YN + cols, mask=col_ok, other=0.0)
            return xn[:, None] + yn[None, :] - 2.0 * acc
        return 1.0 - acc

    @triton.jit
    def _tile_distance(X, Y, XN, YN, b, rows, cols, row_ok, col_ok, C,
                       sxb, sxn, sxc, syb, syn, syc,
                       IS_L2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_C: tl.constexpr, PRECISION: tl.constexpr):
        """d for a (BLOCK_M, BLOCK_N) tile, and a mask of the entries not clamped (l2)."""
        raw = _tile_raw_distance(X, Y, XN, YN, b, rows, cols, row_ok, col_ok, C,
                                 sxb, sxn, sxc, syb, syn, syc, IS_L2, BLOCK_M, BLOCK_N, BLOCK_C, PRECISION)
        if IS_L2:
            return tl.maximum(raw, 0.0), raw >= 0.0
        return raw, raw == raw

    @triton.jit
    def _tile_similarity(X, Y, XN, YN, M, LSE, b, rows, cols, row_ok, col_ok, Nx, C,
                         sxb, sxn, sxc, syb, syn, syc, inv_h, eps,
                         IS_L2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_C: tl.constexpr, PRECISION: tl.constexpr):
        """CX_ij for a tile, rebuilt from the distances and the rows' saved statistics (their
        minimum and log-normaliser), the distances, and the l2 clamp mask."""
        d, unclamped = _tile_distance(X, Y, XN, YN, b, rows, cols, row_ok, col_ok, C,
                                      sxb, sxn, sxc, syb, syn, syc, IS_L2, BLOCK_M, BLOCK_N,
                                      BLOCK_C, PRECISION)
        minimum = tl.load(M + b * Nx + rows, mask=row_ok, other=0.0)
        lse = tl.load(LSE + b * Nx + rows, mask=row_ok, other=0.0)
        den = tl.maximum(minimum, 0.0) + eps
        return tl.exp((1.0 - d / den[:, None]) * inv_h - lse[:, None]), d, unclamped

    @triton.jit
    def _tile_grad_distance(X, Y, XN, YN, M, LSE, R, BEST, BROW, G, b, rows, cols, row_ok, col_ok,
                            Nx, N, C, sxb, sxn, sxc, syb, syn, syc, inv_h, eps,
                            IS_L2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                            BLOCK_C: tl.constexpr, PRECISION: tl.constexpr):
        """dL/dd_ik for a tile through the softmax and the max (not through the row minimum):
        CX_ik (r_i - [i is column k's best row] g) / (h den_i), with r_i = g sum of CX_ij over
        the columns j whose best row is i, and g = dL/dbest_j (the same for every column);
        and the tile's distances.

        Both terms are formed here, entry by entry, before any product: at an exact match
        CX_ik = 1 and the two cancel, which after a product over the channels would leave
        (1/(h eps)) times float32 rounding. At the best entries CX_ik is the forward's saved
        best_k, the very number r_i was summed from."""
        cx, d, unclamped = _tile_similarity(X, Y, XN, YN, M, LSE, b, rows, cols, row_ok,
                                            col_ok, Nx, C, sxb, sxn, sxc, syb, syn, syc, inv_h,
                                            eps, IS_L2, BLOCK_M, BLOCK_N, BLOCK_C, PRECISION)
        minimum = tl.load(M + b * Nx + rows, mask=row_ok, other=0.0)
        r = tl.load(R + b * Nx + rows, mask=row_ok, other=0.0)
        best = tl.load(BEST + b * N + cols, mask=col_ok, other=0.0)
        best_row = tl.load(BROW + b * N + cols, mask=col_ok, other=-1)
        g = tl.load(G + b)
        scale = inv_h / (tl.maximum(minimum, 0.0) + eps)
        chosen = best_row[None, :] == rows[:, None]
        cx = tl.where(chosen, best[None, :], cx)
        grad = cx * (r[:, None] - tl.where(chosen, g, 0.0)) * scale[:, None]
        return tl.where(row_ok[:, None] & col_ok[None, :] & unclamped, grad, 0.0), d

    @triton.jit
    def _row_stats(X, Y, XN, YN, M_out, AM_out, LSE_out, Nx, N, C,
                   sxb, sxn, sxc, syb, syn, syc, inv_h, eps,
                   IS_L2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_C: tl.constexpr, PRECISION: tl.constexpr):
        pid, b = tl.program_id(0), tl.program_id(1)
        rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < Nx
        xn_ptr = XN + b * Nx
        yn_ptr = YN + b * N
        # The minimum before l2's clamp: min_k d_ik is max(minimum, 0), and minimum < 0 says the
        # clamp was active there (no gradient through it), which the backward reads from M.
        minimum = tl.full((BLOCK_M,), float("inf"), tl.float32)
        where = tl.zeros((BLOCK_M,), tl.int32)
        for n0 in range(0, N, BLOCK_N):
            cols = n0 + tl.arange(0, BLOCK_N)
            col_ok = cols < N
            raw = _tile_raw_distance(X, Y, xn_ptr, yn_ptr, b, rows, cols, row_ok, col_ok, C,
                                     sxb, sxn, sxc, syb, syn, syc, IS_L2, BLOCK_M, BLOCK_N,
                                     BLOCK_C, PRECISION)
            raw = tl.where(col_ok[None, :], raw, float("inf"))
            tile_min = tl.min(raw, axis=1)
            tile_where = tl.argmin(raw, axis=1).to(tl.int32) + n0
            better = tile_min < minimum
            minimum = tl.where(better, tile_min, minimum)
            where = tl.where(better, tile_where, where)
        den = tl.maximum(minimum, 0.0) + eps
        nearest = minimum  # d at the row's nearest neighbour
        if IS_L2:
            nearest = tl.maximum(minimum, 0.0)
        top = (1.0 - nearest / den) * inv_h  # the row's largest logit, at its nearest neighbour
        total = tl.zeros((BLOCK_M,), tl.float32)
        for n0 in range(0, N, BLOCK_N):
            cols = n0 + tl.arange(0, BLOCK_N)
            col_ok = cols < N
            d, _ = _tile_distance(X, Y, xn_ptr, yn_ptr, b, rows, cols, row_ok, col_ok, C,
                                  sxb, sxn, sxc, syb, syn, syc, IS_L2, BLOCK_M, BLOCK_N, BLOCK_C, PRECISION)
            e = tl.exp((1.0 - d / den[:, None]) * inv_h - top[:, None])
            e = tl.where(col_ok[None, :], e, 0.0)
            total += tl.sum(e, axis=1)
        out = b * Nx + rows
        tl.store(M_out + out, minimum, mask=row_ok)
        tl.store(AM_out + out, where, mask=row_ok)
        tl.store(LSE_out + out, top + tl.log(total), mask=row_ok)

    @triton.jit
    def _column_max(X, Y, XN, YN, M, LSE, BEST_out, ROW_out, Nx, N, C,
                    sxb, sxn, sxc, syb, syn, syc, inv_h, eps,
                    IS_L2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_C: tl.constexpr, PRECISION: tl.constexpr):
        pid, b = tl.program_id(0), tl.program_id(1)
        cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        best = tl.full((BLOCK_N,), -1.0, tl.float32)
        best_row = tl.zeros((BLOCK_N,), tl.int32)
        for m0 in range(0, Nx, BLOCK_M):
            rows = m0 + tl.arange(0, BLOCK_M)
            row_ok = rows < Nx
            cx, _, _ = _tile_similarity(X, Y, XN + b * Nx, YN + b * N, M, LSE, b, rows, cols,
                                        row_ok, col_ok, Nx, C, sxb, sxn, sxc, syb, syn, syc,
                                        inv_h, eps, IS_L2, BLOCK_M, BLOCK_N, BLOCK_C, PRECISION)
            cx = tl.where(row_ok[:, None], cx, -1.0)
            tile_best = tl.max(cx, axis=0)
            tile_row = tl.argmax(cx, axis=0).to(tl.int32) + m0
            better = tile_best > best
            best = tl.where(better, tile_best, best)
            best_row = tl.where(better, tile_row, best_row)
        tl.store(BEST_out + b * N + cols, best, mask=col_ok)
        tl.store(ROW_out + b * N + cols, best_row, mask=col_ok)

    @triton.jit
    def _grad_x(X, Y, XN, YN, M, LSE, R, BEST, BROW, G, GX_out, PSUM_out, PD_out, Nx, N, C,
                sxb, sxn, sxc, syb, syn, syc, inv_h, eps,
                IS_L2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_C: tl.constexpr, BLOCK_CO: tl.constexpr,
                PRECISION: tl.constexpr):
        """(P @ Y)[rows, channel block], and the row sums of P and of P * d, with P = dL/dd
        (_tile_grad_distance). sum_k P_ik d_ik is the gradient through the row minimum (times
        -den_i), summed entry by entry: at a match its terms are 0, where t_i - r_i q_i of
        per-row sums would leave rounding divided by den_i."""
        pid, pc, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < Nx
        out_ch = pc * BLOCK_CO + tl.arange(0, BLOCK_CO)
        out_ok = out_ch < C
        acc = tl.zeros((BLOCK_M, BLOCK_CO), tl.float32)
        psum = tl.zeros((BLOCK_M,), tl.float32)
        pd = tl.zeros((BLOCK_M,), tl.float32)
        for n0 in range(0, N, BLOCK_N):
            cols = n0 + tl.arange(0, BLOCK_N)
            col_ok = cols < N
            p, d = _tile_grad_distance(X, Y, XN + b * Nx, YN + b * N, M, LSE, R, BEST, BROW, G,
                                       b, rows, cols, row_ok, col_ok, Nx, N, C, sxb, sxn, sxc,
                                       syb, syn, syc, inv_h, eps, IS_L2, BLOCK_M, BLOCK_N,
                                       BLOCK_C, PRECISION)
            y = tl.load(Y + b * syb + cols[:, None] * syn + out_ch[None, :] * syc,
                        mask=col_ok[:, None] & out_ok[None, :], other=0.0)
            acc += tl.dot(p, y, input_precision=PRECISION)
            psum += tl.sum(p, axis=1)
            pd += tl.sum(p * d, axis=1)
        tl.store(GX_out + b * Nx * C + rows[:, None] * C + out_ch[None, :], acc,
                 mask=row_ok[:, None] & out_ok[None, :])
        if pc == 0:
            tl.store(PSUM_out + b * Nx + rows, psum, mask=row_ok)
            tl.store(PD_out + b * Nx + rows, pd, mask=row_ok)

    @triton.jit
    def _grad_y(X, Y, XN, YN, M, LSE, R, BEST, BROW, G, GY_out, PSUM_out, Nx, N, C,
                sxb, sxn, sxc, syb, syn, syc, inv_h, eps,
                IS_L2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_C: tl.constexpr, BLOCK_CO: tl.constexpr,
                PRECISION: tl.constexpr):
        """(P^T @ X)[cols, channel block] and the column sums of P."""
        pid, pc, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        out_ch = pc * BLOCK_CO + tl.arange(0, BLOCK_CO)
        out_ok = out_ch < C
        acc = tl.zeros((BLOCK_N, BLOCK_CO), tl.float32)
        psum = tl.zeros((BLOCK_N,), tl.float32)
        for m0 in range(0, Nx, BLOCK_M):
            rows = m0 + tl.arange(0, BLOCK_M)
            row_ok = rows < Nx
            p, _ = _tile_grad_distance(X, Y, XN + b * Nx, YN + b * N, M, LSE, R, BEST, BROW, G,
                                       b, rows, cols, row_ok, col_ok, Nx, N, C, sxb, sxn, sxc,
                                       syb, syn, syc, inv_h, eps, IS_L2, BLOCK_M, BLOCK_N,
                                       BLOCK_C, PRECISION)
            x = tl.load(X + b * sxb + rows[:, None] * sxn + out_ch[None, :] * sxc,
                        mask=row_ok[:, None] & out_ok[None, :], other=0.0)
            acc += tl.dot(tl.trans(p), x, input_precision=PRECISION)
            psum += tl.sum(p, axis=0)
        tl.store(GY_out + b * N * C + cols[:, None] * C + out_ch[None, :], acc,
                 mask=col_ok[:, None] & out_ok[None, :])
        if pc == 0:
            tl.store(PSUM_out + b * N + cols, psum, mask=col_ok)


    @triton.jit
    def _grad_rows(X, Y, XN, YN, M, LSE, R, BEST, BROW, G, GX_out, GY_out, PSUM_out, PD_out,
                   PSUMY_out, Nx, N, C, sxb, sxn, sxc, syb, syn, syc, inv_h, eps,
                   IS_L2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_C: tl.constexpr, BLOCK_CO: tl.constexpr, PRECISION: tl.constexpr,
                   NEED_Y: tl.constexpr):
        """The backward in one pass over the tiles (backward="one-pass"): each tile's P = dL/dd
        is formed once and multiplied by every channel of Y (P @ Y, the rows' own, added into
        GX_out in place) and, with NEED_Y, of X (P^T @ X, added atomically into GY_out, which
        other row blocks share); the row sums of P and of P * d as in _grad_x, and the column
        sums of P (atomically) for y's l2 gradient. GX_out, GY_out and PSUMY_out start at 0.

        The atomic adds are relaxed: nothing reads GY_out before the kernel ends, and the default
        (acq_rel) fences the whole GPU and drops the SM's L1 cache at every add. With NEED_Y each
        program starts at another column tile, so that the programs running at once add into
        different rows of GY_out rather than queueing on the same addresses."""
        pid, b = tl.program_id(0), tl.program_id(1)
        rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < Nx
        psum = tl.zeros((BLOCK_M,), tl.float32)
        pd = tl.zeros((BLOCK_M,), tl.float32)
        tiles = tl.cdiv(N, BLOCK_N)
        for t in range(0, tiles):
            if NEED_Y:
                n0 = ((pid + t) % tiles) * BLOCK_N
            else:  # in order, as _grad_x sums: the same x gradient to the last bit
                n0 = t * BLOCK_N
            cols = n0 + tl.arange(0, BLOCK_N)
            col_ok = cols < N
            p, d = _tile_grad_distance(X, Y, XN + b * Nx, YN + b * N, M, LSE, R, BEST, BROW, G,
                                       b, rows, cols, row_ok, col_ok, Nx, N, C, sxb, sxn, sxc,
                                       syb, syn, syc, inv_h, eps, IS_L2, BLOCK_M, BLOCK_N,
                                       BLOCK_C, PRECISION)
            psum += tl.sum(p, axis=1)
            pd += tl.sum(p * d, axis=1)
            if NEED_Y:
                tl.atomic_add(PSUMY_out + b * N + cols, tl.sum(p, axis=0), mask=col_ok,
                              sem="relaxed")
            for c0 in range(0, C, BLOCK_CO):
                ch = c0 + tl.arange(0, BLOCK_CO)
                ch_ok = ch < C
                y = tl.load(Y + b * syb + cols[:, None] * syn + ch[None, :] * syc,
                            mask=col_ok[:, None] & ch_ok[None, :], other=0.0)
                # This program alone writes these rows of GX_out: a read-modify-write.
                gx_at = GX_out + b * Nx * C + rows[:, None] * C + ch[None, :]
                gx_ok = row_ok[:, None] & ch_ok[None, :]
                gx = tl.load(gx_at, mask=gx_ok, other=0.0)
                tl.store(gx_at, gx + tl.dot(p, y, input_precision=PRECISION), mask=gx_ok)
                if NEED_Y:
                    x = tl.load(X + b * sxb + rows[:, None] * sxn + ch[None, :] * sxc,
                                mask=gx_ok, other=0.0)
                    tl.atomic_add(GY_out + b * N * C + cols[:, None] * C + ch[None, :],
                                  tl.dot(tl.trans(p), x, input_precision=PRECISION),
                                  mask=col_ok[:, None] & ch_ok[None, :], sem="relaxed")
            # The next tile reads GX_out back, maybe in other threads than wrote it.
            tl.debug_barrier()
        out = b * Nx + rows
        tl.store(PSUM_out + out, psum, mask=row_ok)
        tl.store(PD_out + out, pd, mask=row_ok)

    # The same kernel, launched with NEED_Y=True: its own name, so that launch_config and the
    # compile report treat the two compilations as the two kernels they are.
    _grad_rows_xy = _grad_rows

# Launch configuration --------------------------------------------------------------------------
# One place for what the launches pass besides the tensors: the constexprs and Triton's launch
# options. _FusedSimilarity launches through launch_config, and cxlib.contextual.fused_report compiles the
# same configurations (tests/test_fused_compile.py checks registers and spills with ptxas).

#: The kernels, by name: the forward's two, the backward's two of backward="two-kernels", and the
#: one of backward="one-pass" (launched as _grad_rows for x's gradient alone, as _grad_rows_xy
#: for both).
KERNELS = ("_row_stats", "_column_max", "_grad_x", "_grad_y", "_grad_rows", "_grad_rows_xy")
_GRADIENT_KERNELS = ("_grad_x", "_grad_y", "_grad_rows", "_grad_rows_xy")
_ONE_PASS_KERNELS = ("_grad_rows", "_grad_rows_xy")

_BLOCK_M = 64  # rows i of a tile
_BLOCK_N = 64  # columns j of a tile
_BLOCK_C = 32  # channels per step of a tile's distance product,
_BLOCK_C_FEW = 16  # or 16 for at most 16 channels (tl.dot's least; at C = 1, 32 spills)
_BLOCK_CO_MIN = 16  # output channels per program of the gradient kernels: the channel count
_BLOCK_CO_MAX = 64  # rounded up to a power of two, within these bounds

#: Triton's launch options per kernel. The tile products are float32 FMA products (no TF32) whose
#: operands stay in registers, so register pressure is high. Chosen with compile_report (ptxas of
#: Triton 3.8) so that no variant spills on sm_80 or sm_90a:
#: - num_stages=1: software pipelining (Triton's default, 3 stages) spills on sm_80;
#: - maxnreg: ptxas otherwise aims at two programs per SM (128 registers with 8 warps, 64 with 16)
#:   and spills to get there; maxnreg lets a program use all the registers it may;
#: - the gradient kernels hold a (64, BLOCK_CO) accumulator as well: 16 warps, and BLOCK_CO at
#:   most 64 (128 spills on sm_80 with 4, 8 or 16 warps).
_OPTIONS = {
    "_row_stats": dict(num_warps=8, num_stages=1, maxnreg=255),
    "_column_max": dict(num_warps=8, num_stages=1, maxnreg=255),
    "_grad_x": dict(num_warps=16, num_stages=1, maxnreg=128),
    "_grad_y": dict(num_warps=16, num_stages=1, maxnreg=128),
    "_grad_rows": dict(num_warps=8, num_stages=1, maxnreg=255),
    "_grad_rows_xy": dict(num_warps=8, num_stages=1, maxnreg=255),
}
#: The one-pass kernels multiply each tile by BLOCK_CO channels at a time, inside their loop over
#: the tiles. By ptxas here (Triton 3.8): _grad_rows_xy, with both P @ Y and P^T @ X, spills on
#: sm_75, sm_80 and sm_90a with BLOCK_CO = 32 or 64 (8 or 16 warps); _grad_rows spills with 16
#: warps at 1 channel and (l2, sm_75) at 33, and with 8 warps at BLOCK_CO = 64. With 16 and 8
#: warps neither spills for any channel count above 1. At 1 channel (which Triton folds in as a
#: constant) both spill with 4, 8 or 16 warps, and there the two-kernel backward, one block per
#: kernel, runs instead (:func:`_one_pass_applies`).
_ONE_PASS_BLOCK_CO = 16


def _one_pass_applies(channels: int) -> bool:
    """Whether backward="one-pass" runs the one-pass kernels for this channel count."""
    return channels > 1
#: With precision="tf32x3" each tile product is three tensor-core (mma) products of operands split
#: into high and low TF32 halves, which takes more registers: by a ptxas sweep here (Triton 3.8),
#: BLOCK_C = 32 or BLOCK_CO = 32 spill on sm_80 with 4 or 8 warps, and 16 for both with 8 warps
#: spills on neither sm_80 nor sm_90a where the channel count is a multiple of 16 above 16 (VGG's
#: 64 to 512 are). Other counts spilled in _grad_y on sm_80 (2 and 17 channels, with 4, 8 or 16
#: warps), so there the products stay IEEE. Not yet timed on a GPU: chosen for no spills, not for
#: speed.
_TF32X3_BLOCK_C = 16
_TF32X3_BLOCK_CO = 16
_TF32X3_OPTIONS = dict(num_warps=8, num_stages=1, maxnreg=255)
#: Keys of launch_config's dict that are launch options (the others are the kernels' constexprs).
_OPTION_NAMES = ("num_warps", "num_stages", "maxnreg")


def _tf32x3_applies(channels: int) -> bool:
    """Whether precision="tf32x3" is used for this channel count (else IEEE, see above)."""
    return channels > _BLOCK_C_FEW and channels % _TF32X3_BLOCK_C == 0


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def launch_config(kernel: str, channels: int, distance: str,
                  precision: str = "ieee") -> dict[str, Any]:
    """The constexprs and launch options with which ``kernel`` (a name in :data:`KERNELS`) is
    launched for points with ``channels`` channels, ``distance`` and tile products in
    ``precision`` (:data:`FUSED_PRECISIONS`): ``IS_L2``, ``BLOCK_M``, ``BLOCK_N``, ``BLOCK_C``,
    ``PRECISION``, ``BLOCK_CO`` (gradient kernels) and ``num_warps`` (with ``num_stages`` and
    ``maxnreg`` where set), as keyword arguments of the launch.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if distance not in FUSED_DISTANCES:
        raise ValueError(f"distance must be one of {FUSED_DISTANCES}, got {distance!r}")
    if precision not in FUSED_PRECISIONS:
        raise ValueError(f"precision must be one of {FUSED_PRECISIONS}, got {precision!r}")
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    if not _tf32x3_applies(channels):
        precision = "ieee"
    config = dict(IS_L2=distance == "l2", BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N,
                  BLOCK_C=_BLOCK_C if channels > _BLOCK_C_FEW else _BLOCK_C_FEW,
                  PRECISION=precision)
    if kernel in _GRADIENT_KERNELS:
        config["BLOCK_CO"] = min(_BLOCK_CO_MAX, max(_BLOCK_CO_MIN, _next_power_of_2(channels)))
    if kernel in _ONE_PASS_KERNELS:
        config["NEED_Y"] = kernel == "_grad_rows_xy"
    if kernel in _ONE_PASS_KERNELS:
        config["BLOCK_CO"] = _ONE_PASS_BLOCK_CO
    config.update(_OPTIONS[kernel])
    if precision == "tf32x3":
        config["BLOCK_C"] = _TF32X3_BLOCK_C
        if kernel in _GRADIENT_KERNELS:
            config["BLOCK_CO"] = _TF32X3_BLOCK_CO
        config.update(_TF32X3_OPTIONS)
    if torch.version.hip is not None:  # ROCm's "cuda" devices: Triton's AMD backend has no maxnreg
        config.pop("maxnreg", None)
    return config


def _split_config(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(constexprs, launch options) of a launch_config dict."""
    constexprs = {k: v for k, v in config.items() if k not in _OPTION_NAMES}
    options = {k: v for k, v in config.items() if k in _OPTION_NAMES}
    return constexprs, options


def _int_args(num_x: int, num_y: int, channels: int) -> dict[str, Any]:
    """The kernels' integer arguments for contiguous points (B, Nx, C) and (B, N, C), the layout
    fused_similarity makes: sizes and strides."""
    return dict(Nx=num_x, N=num_y, C=channels, sxb=num_x * channels, sxn=channels, sxc=1,
                syb=num_y * channels, syn=channels, syc=1)


def _specialization(value: int) -> str:
    """How Triton's JIT specialises an integer argument: "1" (folded into the kernel as a
    constant), "16" (marked a multiple of 16, which allows wider memory accesses) or ""."""
    return "1" if value == 1 else "16" if value % 16 == 0 else ""


#: Point counts (Nx, N) that kernel_variants crosses with the channel counts: not multiples of 16
#: (7x7 maps) and multiples of 16 (32x32 maps).
DEFAULT_POINTS = ((49, 49), (1024, 1024))


def kernel_variants(channels: Iterable[int] = range(1, 513),
                    points: Iterable[tuple[int, int]] = DEFAULT_POINTS,
                    distances: Iterable[str] = FUSED_DISTANCES,
                    precisions: Iterable[str] = FUSED_PRECISIONS) -> list[dict[str, Any]]:
    """Every distinct compilation of the kernels that the launches make for these channel counts
    and (Nx, N) point counts: the constexprs and options of :func:`launch_config` and how Triton
    specialises the integer arguments (sizes and strides equal to 1, or multiples of 16). One
    dict per variant, with ``kernel``, ``distance``, ``constexprs``, ``options``, ``shape`` (an
    example (Nx, N, C) that launches it) and ``specialization`` (the integer arguments that are 1
    or multiples of 16, e.g. ``"C=16 sxc=1"``), in a stable order.
    """
    variants: dict[Any, Any] = {}
    channels, points = list(channels), list(points)
    for kernel, distance, precision in itertools.product(KERNELS, distances, precisions):
        for num_x, num_y in points:
            for c in channels:
                if kernel in _ONE_PASS_KERNELS and not _one_pass_applies(c):
                    continue  # never launched
                constexprs, options = _split_config(launch_config(kernel, c, distance, precision))
                ints = _int_args(num_x, num_y, c)
                spec = " ".join(f"{k}={_specialization(v)}" for k, v in ints.items()
                                if _specialization(v))
                key = (kernel, distance, tuple(constexprs.items()), tuple(options.items()), spec)
                variants.setdefault(key, dict(kernel=kernel, distance=distance,
                                              constexprs=constexprs, options=options,
                                              shape=(num_x, num_y, c), specialization=spec))
    return list(variants.values())


def _launch_args(x: torch.Tensor, y: torch.Tensor, distance: str):
    is_l2 = distance == "l2"
    if is_l2:
        xn = x.square().sum(-1).contiguous()
        yn = y.square().sum(-1).contiguous()
    else:  # not read
        xn = yn = x.new_zeros(1)
    strides = (*x.stride(), *y.stride())
    return is_l2, xn, yn, strides


def _on_device_of(tensor: torch.Tensor):
    """Triton launches on the *current* CUDA device: make it the tensors' for the launch, so that
    features on cuda:1 are not read as if they were on cuda:0."""
    if tensor.device.type == "cuda":
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


class _FusedSimilarity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, distance, band_width, eps, precision, backward_mode):
        batch, num_x, channels = x.shape
        num_y = y.shape[1]
        _, xn, yn, strides = _launch_args(x, y, distance)
        m = torch.empty(batch, num_x, device=x.device, dtype=torch.float32)
        am = torch.empty(batch, num_x, device=x.device, dtype=torch.int32)
        lse = torch.empty_like(m)
        common = (num_x, num_y, channels, *strides, 1.0 / band_width, eps)
        best = torch.empty(batch, num_y, device=x.device, dtype=torch.float32)
        best_row = torch.empty(batch, num_y, device=x.device, dtype=torch.int32)
        with _on_device_of(x):
            config = launch_config("_row_stats", channels, distance, precision)
            grid = (triton.cdiv(num_x, config["BLOCK_M"]), batch)
            _row_stats[grid](x, y, xn, yn, m, am, lse, *common, **config)
            config = launch_config("_column_max", channels, distance, precision)
            grid = (triton.cdiv(num_y, config["BLOCK_N"]), batch)
            _column_max[grid](x, y, xn, yn, m, lse, best, best_row, *common, **config)
        ctx.save_for_backward(x, y, m, am.long(), lse, best, best_row)
        ctx.settings = (distance, band_width, eps, precision, backward_mode)
        return best.mean(dim=-1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_score):
        x, y, m, am, lse, best, best_row_32 = ctx.saved_tensors
        best_row = best_row_32.long()
        distance, band_width, eps, precision, backward_mode = ctx.settings
        batch, num_x, channels = x.shape
        num_y = y.shape[1]
        h = band_width
        den = m.clamp_min(0.0) + eps
        g_sample = (grad_score.float() / num_y).contiguous()  # d score / d best_j, every column j
        g = g_sample.unsqueeze(-1).expand(-1, num_y)

        # r_i = sum over the columns j whose best row is i of g_j CX_ij. The kernels form dL/dd
        # through the softmax and the max from it (_tile_grad_distance).
        r = torch.zeros_like(m).scatter_add_(1, best_row, g * best)
        need_x, need_y = ctx.needs_input_grad[:2]
        is_l2, xn, yn, strides = _launch_args(x, y, distance)
        common = (num_x, num_y, channels, *strides, 1.0 / h, eps)
        saved = (m, lse, r, best, best_row_32, g_sample)
        if backward_mode == "one-pass" and _one_pass_applies(channels):
            one_x, one_y = _one_pass_gradients(x, y, xn, yn, saved, common, need_y, is_l2, am,
                                               den, distance, precision)
            return one_x if need_x else None, one_y, None, None, None, None, None

        # _grad_x also sums P_ik d_ik per row, which the gradient through the row minimum needs
        # for either input: without x's gradient, one channel block of it runs, for that sum.
        py = torch.empty(batch, num_x, channels, device=x.device, dtype=torch.float32)
        psum = torch.empty_like(m)
        pd = torch.empty_like(m)
        config = launch_config("_grad_x", channels, distance, precision)
        channel_blocks = triton.cdiv(channels, config["BLOCK_CO"]) if need_x else 1
        grid = (triton.cdiv(num_x, config["BLOCK_M"]), channel_blocks, batch)
        with _on_device_of(x):
            _grad_x[grid](x, y, xn, yn, *saved, py, psum, pd, *common, **config)
        # The row minimum: dL/dm_i = sum_k dL/dlogit_ik d_ik / (h den_i^2) = -sum_k P_ik d_ik
        # / den_i, routed to (i, argmin_i); none where m_i < 0 (1 - cos rounded below 0, or
        # l2's expansion was clamped there, see _row_stats).
        row_value = torch.where(m >= 0, -pd / den, 0.0)

        grad_x = grad_y = None
        if need_x:
            grad_x = _x_gradient(is_l2, x, y, am, row_value, py, psum)
        if need_y:
            px = torch.empty(batch, num_y, channels, device=x.device, dtype=torch.float32)
            psum = torch.empty(batch, num_y, device=x.device, dtype=torch.float32)
            config = launch_config("_grad_y", channels, distance, precision)
            grid = (triton.cdiv(num_y, config["BLOCK_N"]), triton.cdiv(channels, config["BLOCK_CO"]), batch)
            with _on_device_of(x):
                _grad_y[grid](x, y, xn, yn, *saved, px, psum, *common, **config)
            grad_y = _y_gradient(is_l2, x, y, am, row_value, px, psum)
        return grad_x, grad_y, None, None, None, None, None


def _one_pass_gradients(x: torch.Tensor, y: torch.Tensor, xn: torch.Tensor, yn: torch.Tensor,
                        saved: tuple[torch.Tensor, ...], common: tuple[Any, ...], need_y: bool,
                        is_l2: bool, am: torch.Tensor, den: torch.Tensor, distance: str,
                        precision: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(grad_x, grad_y) of backward="one-pass": _grad_rows (or _grad_rows_xy with y's gradient)
    once over the tiles, then the same O(N) terms as the two-kernel backward. x's gradient is
    always formed (the row sums come with it)."""
    batch, num_x, channels = x.shape
    num_y = y.shape[1]
    m = saved[0]
    py = torch.zeros(batch, num_x, channels, device=x.device, dtype=torch.float32)
    px = torch.zeros(batch, num_y, channels, device=x.device, dtype=torch.float32) if need_y \
        else py.new_zeros(1)
    psum_y = torch.zeros(batch, num_y, device=x.device, dtype=torch.float32) if need_y \
        else m.new_zeros(1)
    psum = torch.empty_like(m)
    pd = torch.empty_like(m)
    kernel = "_grad_rows_xy" if need_y else "_grad_rows"
    config = launch_config(kernel, channels, distance, precision)
    grid = (triton.cdiv(num_x, config["BLOCK_M"]), batch)
    with _on_device_of(x):
        _grad_rows[grid](x, y, xn, yn, *saved, py, px, psum, pd, psum_y, *common, **config)
    row_value = torch.where(m >= 0, -pd / den, 0.0)
    grad_x = _x_gradient(is_l2, x, y, am, row_value, py, psum)
    grad_y = _y_gradient(is_l2, x, y, am, row_value, px, psum_y) if need_y else None
    return grad_x, grad_y


def _x_gradient(is_l2: bool, x: torch.Tensor, y: torch.Tensor, am: torch.Tensor,
                row_value: torch.Tensor, py: torch.Tensor, psum: torch.Tensor) -> torch.Tensor:
    """dL/dx from the kernels' P @ Y and row sums of P (dense: cosine -P@Y, l2
    2(rowsum(P) x - P@Y)) and from the row minima."""
    dense = -py if not is_l2 else 2.0 * (psum.unsqueeze(-1) * x - py)
    return dense + _row_minimum_to_x(is_l2, x, y, am, row_value)


def _y_gradient(is_l2: bool, x: torch.Tensor, y: torch.Tensor, am: torch.Tensor,
                row_value: torch.Tensor, px: torch.Tensor, psum: torch.Tensor) -> torch.Tensor:
    """dL/dy from the kernels' P^T @ X and column sums of P, and from the row minima."""
    dense = -px if not is_l2 else 2.0 * (psum.unsqueeze(-1) * y - px)
    return dense + _row_minimum_to_y(is_l2, x, y, am, row_value)


def _row_minimum_to_x(is_l2: bool, x: torch.Tensor, y: torch.Tensor, am: torch.Tensor,
                      row_value: torch.Tensor) -> torch.Tensor:
    """dL/dx from dL/dd at the row minima, (i, argmin_i)."""
    y_min = y.gather(1, am.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    if is_l2:
        return 2.0 * row_value.unsqueeze(-1) * (x - y_min)
    return -row_value.unsqueeze(-1) * y_min


def _row_minimum_to_y(is_l2: bool, x: torch.Tensor, y: torch.Tensor, am: torch.Tensor,
                      row_value: torch.Tensor) -> torch.Tensor:
    """dL/dy from dL/dd at the row minima, (i, argmin_i)."""
    index = am.unsqueeze(-1).expand(-1, -1, x.shape[-1])
    y_min = y.gather(1, index)
    push = 2.0 * row_value.unsqueeze(-1) * (y_min - x) if is_l2 else -row_value.unsqueeze(-1) * x
    return torch.zeros_like(y).scatter_add_(1, index, push)


#: The kernels index memory with 32-bit offsets (b * B_stride + i * N_stride + c): a point set
#: (or a gradient buffer of its size) must hold fewer numbers than this.
MAX_FUSED_ELEMENTS = 2**31 - 1


def fits_fused(x_shape: Sequence[int], y_shape: Sequence[int]) -> bool:
    """Whether point sets of these shapes, (B, Nx, C) and (B, N, C), fit the kernels' 32-bit
    offsets."""
    return max(math.prod(x_shape), math.prod(y_shape)) <= MAX_FUSED_ELEMENTS


def check_fused_size(x_shape: Sequence[int], y_shape: Sequence[int]) -> None:
    """Raise ``ValueError`` for point sets too large for the kernels' 32-bit offsets."""
    if not fits_fused(x_shape, y_shape):
        raise ValueError(
            f"the fused kernels use 32-bit offsets: B * N * C must be at most "
            f"{MAX_FUSED_ELEMENTS} for both point sets, got x {tuple(x_shape)} "
            f"({math.prod(x_shape)}) and y {tuple(y_shape)} ({math.prod(y_shape)}). "
            f"Use implementation='blocked', or split the batch."
        )


def _has_tf32(device: torch.device) -> bool:
    """Whether tf32x3 products can run here: NVIDIA cards from sm_80, and Triton's interpreter
    (which computes them in float32)."""
    if device.type != "cuda":
        return True
    return torch.version.hip is None and torch.cuda.get_device_capability(device) >= (8, 0)


def fused_similarity(x_points: torch.Tensor, y_points: torch.Tensor, *, distance: str,
                     band_width: float, eps: float, precision: str = "ieee",
                     backward: str = "two-kernels") -> torch.Tensor:
    """CX(X, Y) per sample, (B,), from prepared point sets (B, Nx, C), (B, N, C), with the fused
    kernels. float32 in and out (other dtypes are converted). ``precision`` is how the tile
    products are computed (:data:`FUSED_PRECISIONS`; ``"tf32x3"`` is an unmeasured opt-in);
    ``backward`` how the backward streams over the tiles (:data:`FUSED_BACKWARDS`;
    ``"one-pass"`` is an unmeasured opt-in)."""
    check_fused_size(x_points.shape, y_points.shape)
    problem = _triton_problem()
    if problem is not None:
        raise RuntimeError(f"the fused path cannot run: {problem}")
    if distance not in FUSED_DISTANCES:
        raise ValueError(f"the fused path implements {FUSED_DISTANCES}, got distance={distance!r}")
    if precision not in FUSED_PRECISIONS:
        raise ValueError(f"precision must be one of {FUSED_PRECISIONS}, got {precision!r}")
    if backward not in FUSED_BACKWARDS:
        raise ValueError(f"backward must be one of {FUSED_BACKWARDS}, got {backward!r}")
    if (backward == "one-pass" and y_points.requires_grad and torch.is_grad_enabled()
            and torch.are_deterministic_algorithms_enabled()):
        raise RuntimeError("backward='one-pass' adds y's gradient atomically, in an order that "
                           "varies from run to run, and torch.use_deterministic_algorithms(True) "
                           "is set: use backward='two-kernels' (the default), or detach y")
    if precision == "tf32x3" and not _has_tf32(x_points.device):
        precision = "ieee"
    x = x_points.float().contiguous()
    y = y_points.float().contiguous()
    return cast(torch.Tensor, _FusedSimilarity.apply(x, y, distance, float(band_width), float(eps),
                                                     precision, backward))
