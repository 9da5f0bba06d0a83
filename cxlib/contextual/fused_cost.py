"""What the fused kernels compute, counted: passes over the tiles, products and exponentials.

A count, not a measurement. The fused path never stores the (Nx, N) matrix; every kernel streams
over its tiles and recomputes their distances from the points (see :mod:`.fused`), so its time
is set by how many times it does so and by the products that come with each pass:

- forward: ``_row_stats`` two passes (the row minimum, then the row normaliser), ``_column_max``
  one (the column max of Eq. 1);
- backward, ``backward="two-kernels"`` (the default): ``_grad_x`` and ``_grad_y`` one pass per
  block of output channels (each program rebuilds dL/dd for its tile, then multiplies it by
  ``BLOCK_CO`` channels of Y or X), so with more channels than one block holds the distances are
  recomputed once per block;
- backward, ``backward="one-pass"``: ``_grad_rows`` one pass, forming dL/dd once per tile and
  multiplying it by every channel of Y (and of X where y's gradient is wanted).

Every pass forms the tile's distances with a product over the channels (2 multiply-adds counted
as 2 floating-point operations per entry and channel, the channels rounded up to the kernels'
``BLOCK_C``); the passes that rebuild CX take one exponential per entry; the gradient kernels add
their P @ Y or P^T @ X product over their channel blocks. :func:`fused_cost` counts these for the
launches :func:`~cxlib.contextual.fused.launch_config` gives, and ``tests/test_fused_cost.py``
checks the passes against the tiles the kernels compute under Triton's interpreter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .fused import (FUSED_BACKWARDS, FUSED_DISTANCES, FUSED_PRECISIONS, _one_pass_applies,
                    launch_config)

__all__ = ["FusedCost", "fused_cost"]


@dataclass(frozen=True)
class FusedCost:
    """The work of one call of the fused kernels (see :func:`fused_cost`).

    Attributes:
        passes: how many times the kernels form the distances of every tile of the (Nx, N)
            matrix (for each sample of the batch).
        product_flop: floating-point operations of the tile products (distances and gradients),
            padding to the kernels' channel blocks included.
        exponentials: exponentials computed (one per entry of each pass that rebuilds CX).
        precision: how the products are computed after :func:`launch_config`'s fallbacks
            (``"ieee"`` or ``"tf32x3"``).
    """

    passes: int
    product_flop: float
    exponentials: float
    precision: str

    def floor_ms(self, *, ieee_tflops: float, tf32_tflops: float) -> float:
        """The time the products alone take at a card's rates, in milliseconds: float32 FMA at
        ``ieee_tflops``; tf32x3 as three TF32 tensor-core products at ``tf32_tflops`` (dense,
        TFLOP/s). A floor for these kernels, not a prediction: it leaves out the exponentials,
        memory traffic and everything else a kernel does."""
        for name, value in (("ieee_tflops", ieee_tflops), ("tf32_tflops", tf32_tflops)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        rate = ieee_tflops if self.precision == "ieee" else tf32_tflops / 3
        return self.product_flop / (rate * 1e12) * 1e3


def _padded(channels: int, block: int) -> int:
    return math.ceil(channels / block) * block


def fused_cost(batch: int, num_x: int, num_y: int, channels: int, *, distance: str = "cosine",
               precision: str = "ieee", backward: str | None = "two-kernels",
               grad_x: bool = True, grad_y: bool = True) -> FusedCost:
    """Count the work of the fused kernels on point sets (B, Nx, C) and (B, N, C).

    Args:
        batch, num_x, num_y, channels: B, Nx, N and C.
        distance: ``"cosine"`` or ``"l2"`` (the same count: the squared norms are O(N)).
        precision: the tile products asked for (:data:`~cxlib.contextual.fused.FUSED_PRECISIONS`);
            ``"tf32x3"`` counts as ``"ieee"`` for the channel counts the kernels keep in IEEE
            (cards before sm_80, which also keep IEEE, are not known here).
        backward: how the backward streams over the tiles
            (:data:`~cxlib.contextual.fused.FUSED_BACKWARDS`), or None for the forward alone.
        grad_x, grad_y: which gradients the backward computes (without x's, ``_grad_x`` still
            runs one channel block for the row sums both gradients need, and ``"one-pass"``
            forms x's gradient anyway; at one channel it runs the two-kernel backward).

    Returns:
        FusedCost: passes, product FLOP, exponentials and the precision used.

    Example:
        >>> cost = fused_cost(1, 16_384, 16_384, 64)
        >>> cost.passes, cost.product_flop / (2 * 16_384**2 * 64)
        (5, 7.0)
    """
    for name, value in (("batch", batch), ("num_x", num_x), ("num_y", num_y),
                        ("channels", channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if distance not in FUSED_DISTANCES:
        raise ValueError(f"distance must be one of {FUSED_DISTANCES}, got {distance!r}")
    if precision not in FUSED_PRECISIONS:
        raise ValueError(f"precision must be one of {FUSED_PRECISIONS}, got {precision!r}")
    if backward is not None and backward not in FUSED_BACKWARDS:
        raise ValueError(f"backward must be one of {FUSED_BACKWARDS} or None, got {backward!r}")
    entries = batch * num_x * num_y

    def distance_flop(kernel: str) -> float:
        block_c = launch_config(kernel, channels, distance, precision)["BLOCK_C"]
        return 2.0 * entries * _padded(channels, block_c)

    passes = 3
    flop = 2 * distance_flop("_row_stats") + distance_flop("_column_max")
    exponentials = 2.0 * entries
    if backward == "one-pass" and _one_pass_applies(channels):
        kernel = "_grad_rows_xy" if grad_y else "_grad_rows"
        block_co = launch_config(kernel, channels, distance, precision)["BLOCK_CO"]
        passes += 1
        flop += distance_flop(kernel) + (1 + grad_y) * 2.0 * entries * _padded(channels, block_co)
        exponentials += entries
    elif backward is not None:
        for kernel, wanted in (("_grad_x", grad_x), ("_grad_y", grad_y)):
            if not wanted and kernel == "_grad_y":
                continue
            config = launch_config(kernel, channels, distance, precision)
            blocks = math.ceil(channels / config["BLOCK_CO"]) if wanted else 1
            passes += blocks
            flop += blocks * (distance_flop(kernel) + 2.0 * entries * config["BLOCK_CO"])
            exponentials += blocks * entries
    used = launch_config("_row_stats", channels, distance, precision)["PRECISION"]
    return FusedCost(passes=passes, product_flop=flop, exponentials=exponentials, precision=used)
