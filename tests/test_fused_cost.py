"""The count of the fused kernels' work (cxlib.contextual.fused_cost): closed forms, and the
passes checked against the tiles the kernels compute under Triton's interpreter."""

from __future__ import annotations

import math

import pytest
import torch

import cxlib.contextual.fused as fused
from cxlib.contextual.fused_cost import FusedCost, fused_cost


def test_closed_forms_at_vgg_channel_counts():
    n = 16_384
    unit = 2.0 * n * n  # one product over one channel, for every entry
    # 64 channels: one output block; 3 forward passes + 1 + 1; 3 + 2 + 2 products.
    cost = fused_cost(1, n, n, 64)
    assert (cost.passes, cost.product_flop, cost.exponentials) == (5, 7 * unit * 64, 4.0 * n * n)
    # 128 channels: BLOCK_CO = 64, two output blocks, each recomputes the tile's distances.
    cost = fused_cost(1, n, n, 128)
    assert (cost.passes, cost.product_flop, cost.exponentials) == (7, 9 * unit * 128, 6.0 * n * n)
    # tf32x3: BLOCK_CO = 16, eight blocks per gradient kernel.
    cost = fused_cost(1, n, n, 128, precision="tf32x3")
    assert cost.precision == "tf32x3"
    assert (cost.passes, cost.product_flop) == (3 + 8 + 8, (3 + 9 + 9) * unit * 128)
    # forward only, and without y's gradient (x's kernel keeps its blocks, y's runs no more).
    assert fused_cost(2, n, n, 128, backward=None).product_flop == 2 * 3 * unit * 128
    assert fused_cost(1, n, n, 128, grad_y=False).passes == 5
    # without x's gradient _grad_x still runs one block for the row sums.
    cost = fused_cost(1, n, n, 128, grad_x=False)
    assert cost.passes == 3 + 1 + 2
    assert cost.product_flop == (3 + (1 + 0.5) + 3) * unit * 128


def test_one_pass_backward():
    n = 16_384
    unit = 2.0 * n * n
    # One pass whatever the channel count: the distances, P @ Y and P^T @ X, once each.
    for precision in ("ieee", "tf32x3"):
        cost = fused_cost(1, n, n, 128, precision=precision, backward="one-pass")
        assert (cost.passes, cost.product_flop, cost.exponentials) == (4, 6 * unit * 128, 3.0 * n * n)
    # Without y's gradient, no P^T @ X.
    assert fused_cost(1, n, n, 512, backward="one-pass", grad_y=False).product_flop == 5 * unit * 512
    # one channel: the two-kernel backward runs (the one-pass kernels spill there)
    assert fused_cost(1, 10, 10, 1, backward="one-pass") == fused_cost(1, 10, 10, 1)
    # 20 channels: distances padded to 32 (BLOCK_C), both gradient products to 32 (BLOCK_CO
    # 16 with y's gradient, so 2 blocks of 16).
    assert fused_cost(1, 10, 10, 20, backward="one-pass").product_flop == \
        (3 * 2.0 * 100 * 32) + (2.0 * 100 * 32) + 2 * (2.0 * 100 * 32)


def test_padding_and_fallback():
    # 3 channels: BLOCK_C = BLOCK_CO = 16, products padded to 16 channels.
    cost = fused_cost(1, 10, 20, 3)
    assert cost.product_flop == 7 * 2.0 * 10 * 20 * 16
    # 40 channels are not a multiple of 16: tf32x3 stays IEEE, as the kernels do.
    assert fused_cost(1, 10, 20, 40, precision="tf32x3").precision == "ieee"


def test_floor_ms():
    ieee = FusedCost(passes=5, product_flop=67e12, exponentials=0.0, precision="ieee")
    assert ieee.floor_ms(ieee_tflops=67, tf32_tflops=495) == pytest.approx(1000.0)
    tf32 = FusedCost(passes=5, product_flop=165e12, exponentials=0.0, precision="tf32x3")
    assert tf32.floor_ms(ieee_tflops=67, tf32_tflops=495) == pytest.approx(1000.0)
    with pytest.raises(ValueError, match="ieee_tflops must be > 0, got 0"):
        ieee.floor_ms(ieee_tflops=0, tf32_tflops=495)


@pytest.mark.parametrize("bad, message", [
    (dict(batch=0), "batch must be a positive int, got 0"),
    (dict(channels=2.0), "channels must be a positive int, got 2.0"),
    (dict(distance="l1"), "distance must be one of"),
    (dict(precision="bf16"), "precision must be one of"),
    (dict(backward=True), "backward must be one of"),
])
def test_bad_arguments(bad, message):
    args = dict(batch=1, num_x=4, num_y=4, channels=8) | bad
    with pytest.raises(ValueError, match=message):
        fused_cost(args.pop("batch"), args.pop("num_x"), args.pop("num_y"), args.pop("channels"),
                   **args)


class _Counting:
    """A stand-in for a Triton JIT function that counts its calls (under the interpreter the
    kernels look their helpers up in the module at run time)."""

    def __init__(self, function):
        self.function, self.calls = function, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.function(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.function, name)


@pytest.mark.skipif(not fused.fused_available("cpu"), reason="needs Triton's interpreter")
@pytest.mark.parametrize("backward", ["two-kernels", "one-pass"])
@pytest.mark.parametrize("channels, need", [(20, (True, True)), (80, (True, True)),
                                            (80, (False, True)), (80, (True, False))])
def test_passes_are_the_tiles_the_kernels_compute(monkeypatch, channels, need, backward):
    counter = _Counting(fused._tile_raw_distance)
    monkeypatch.setattr(fused, "_tile_raw_distance", counter)
    batch, num_x, num_y = 2, 70, 130
    x = torch.randn(batch, num_x, channels, requires_grad=need[0])
    y = torch.randn(batch, num_y, channels, requires_grad=need[1])
    fused.fused_similarity(x, y, distance="cosine", band_width=0.5, eps=1e-5,
                           backward=backward).sum().backward()
    config = fused.launch_config("_row_stats", channels, "cosine")
    tiles = batch * math.ceil(num_x / config["BLOCK_M"]) * math.ceil(num_y / config["BLOCK_N"])
    cost = fused_cost(batch, num_x, num_y, channels, grad_x=need[0], grad_y=need[1],
                      backward=backward)
    assert counter.calls == cost.passes * tiles
