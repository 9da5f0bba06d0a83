"""The fused Triton kernels, run under Triton's interpreter on the CPU (on a GPU with
CXLIB_TEST_DEVICE=cuda): values within 1e-5 and gradients within 1e-4 of a float64 reference."""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
import torch

import cxlib
import numpy_reference as ref
from autograd_graph import node_names
import cxlib.contextual.fused as fused_module
from cxlib.contextual.fused import fused_available

DEVICE = os.environ.get("CXLIB_TEST_DEVICE", "cpu")
pytestmark = pytest.mark.skipif(not fused_available(DEVICE), reason="Triton unavailable")


def _pair(batch, channels, x_size, y_size, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, *x_size, generator=g)
    y = torch.randn(batch, channels, *y_size, generator=g)
    return x.to(DEVICE), y.to(DEVICE)


# Sizes that are not multiples of the 64x64 tiles nor of the 32-channel chunks.
CASES = [(2, 40, (7, 10), (5, 9)), (1, 3, (9, 9), (4, 4)), (1, 130, (3, 5), (6, 3))]


@pytest.mark.parametrize("distance", ["cosine", "l2"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}C{c[1]}")
def test_values_match_the_float64_reference(distance, case):
    x, y = _pair(*case)
    got = cxlib.contextual_similarity(x, y, band_width=0.3, distance=distance, implementation="fused")
    want = ref.contextual_similarity(x.double().cpu().numpy(), y.double().cpu().numpy(), 0.3, 1e-5, distance)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=1e-5)


@pytest.mark.parametrize("backward", fused_module.FUSED_BACKWARDS)
@pytest.mark.parametrize("distance", ["cosine", "l2"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}C{c[1]}")
def test_gradients_match_float64_full_path(distance, case, backward, monkeypatch):
    # implementation="fused" with this backward (the public API takes the default)
    monkeypatch.setattr(fused_module, "fused_similarity",
                        functools.partial(fused_module.fused_similarity, backward=backward))
    x, y = _pair(*case, seed=1)
    upstream = torch.linspace(1.0, -0.5, case[0], device=DEVICE)
    xf, yf = x.clone().requires_grad_(), y.clone().requires_grad_()
    fused = cxlib.contextual_similarity(xf, yf, band_width=0.3, distance=distance, implementation="fused")
    gx, gy = torch.autograd.grad(fused, (xf, yf), upstream)
    xd, yd = x.double().requires_grad_(), y.double().requires_grad_()
    full = cxlib.contextual_similarity(xd, yd, band_width=0.3, distance=distance, implementation="full")
    wx, wy = torch.autograd.grad(full, (xd, yd), upstream.double())
    for got, want in ((gx, wx), (gy, wy)):
        scale = want.abs().max().item()
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4 * scale)


def test_loss_and_gradient_with_the_target_fixed():
    x, y = _pair(2, 16, (6, 6), (5, 5), seed=2)
    x.requires_grad_()
    loss = cxlib.contextual_loss(x, y, implementation="fused")
    (gx,) = torch.autograd.grad(loss, x)
    xd = x.detach().double().requires_grad_()
    want = cxlib.contextual_loss(xd, y.double(), implementation="full")
    (wx,) = torch.autograd.grad(want, xd)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    torch.testing.assert_close(gx.double(), wx, rtol=1e-4, atol=1e-4 * wx.abs().max().item())


def test_identity_small_band_width_and_duplicates_stay_finite():
    y = _pair(1, 8, (5, 5), (5, 5))[1]
    assert cxlib.contextual_similarity(y, y, implementation="fused").item() == pytest.approx(1.0, abs=1e-5)
    dup = torch.ones(1, 8, 4, 4, device=DEVICE, requires_grad=True)
    for h in (0.01, 1e-4):
        loss = cxlib.contextual_loss(dup, y, band_width=h, implementation="fused")
        (grad,) = torch.autograd.grad(loss, dup)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_fused_refuses_what_it_does_not_implement():
    x, y = _pair(1, 4, (3, 3), (3, 3))
    with pytest.raises(ValueError, match=r"implementation='fused' computes one term with distance in \('cosine', 'l2'\)"):
        cxlib.contextual_loss(x, y, distance="l1", implementation="fused")
    with pytest.raises(ValueError, match="use 'blocked'"):
        cxlib.contextual_bilateral_loss(x, y, implementation="fused")


@pytest.mark.skipif(DEVICE != "cpu", reason="checks the CPU choice")
def test_auto_never_picks_the_interpreter_on_the_cpu():
    x, y = _pair(1, 4, (3, 3), (3, 3))
    loss = cxlib.contextual_loss(x.requires_grad_(), y)
    assert "_FusedSimilarityBackward" not in node_names(loss)


def test_inputs_beyond_32_bit_offsets_are_refused_not_misread():
    # B * N * C = 2^31: one past the largest offset the kernels' int32 arithmetic can hold. The
    # check runs on shapes before anything is allocated or launched (meta tensors hold no data).
    big = torch.empty(2, 2**24, 64, device="meta")
    small = torch.empty(2, 16, 64, device="meta")
    for x, y in ((big, small), (small, big)):
        with pytest.raises(ValueError, match=r"32-bit offsets: B \* N \* C must be at most 2147483647"):
            cxlib.contextual.fused.fused_similarity(x, y, distance="cosine", band_width=0.5, eps=1e-5)
    assert cxlib.contextual.fused.fits_fused((2, 2**24 - 1, 64), (2, 16, 64))
    assert not cxlib.contextual.fused.fits_fused((2, 2**24, 64), (2, 16, 64))


@pytest.mark.parametrize("distance", ["cosine", "l2"])
@pytest.mark.parametrize("near", [False, True], ids=["random", "near-duplicates"])
def test_tf32x3_products_keep_the_float64_tolerances(distance, near):
    """precision="tf32x3" (an opt-in of fused_similarity): values and gradients within the IEEE
    kernels' tolerances of the float64 full path, at C = 64 (a count where tf32x3 applies), on
    random points and on near-duplicates (x = y + 1e-4 noise). Triton's interpreter computes every
    product in float32 whatever is asked (the values differ from the IEEE kernels' only by the
    order of the sums, BLOCK_C 16 against 32), so on the CPU this guards the plumbing;
    CXLIB_TEST_DEVICE=cuda measures tf32x3 itself."""
    from cxlib.contextual.fused import fused_similarity
    from cxlib.contextual.full import Term, full_similarity

    g = torch.Generator().manual_seed(7)
    y = torch.randn(2, 45, 64, generator=g)
    x = y[:, :37] + 1e-4 * torch.randn(2, 37, 64, generator=g) if near else torch.randn(2, 37, 64, generator=g)
    if distance == "cosine":
        x, y = torch.nn.functional.normalize(x, dim=-1), torch.nn.functional.normalize(y, dim=-1)
    upstream = torch.tensor([1.0, -0.5])
    results = {}
    for precision in ("ieee", "tf32x3"):
        xf, yf = x.to(DEVICE).requires_grad_(), y.to(DEVICE).requires_grad_()
        value = fused_similarity(xf, yf, distance=distance, band_width=0.5, eps=1e-5, precision=precision)
        results[precision] = (value, *torch.autograd.grad(value, (xf, yf), upstream.to(DEVICE)))
    xd, yd = x.double().requires_grad_(), y.double().requires_grad_()
    want = full_similarity([Term(xd, yd, distance)], 0.5, 1e-5)
    want = (want, *torch.autograd.grad(want, (xd, yd), upstream.double()))
    got = results["tf32x3"]
    torch.testing.assert_close(got[0].double().cpu(), want[0], rtol=1e-5, atol=0)
    for grad, reference in zip(got[1:], want[1:]):
        scale = reference.abs().max().item()
        torch.testing.assert_close(grad.double().cpu(), reference, rtol=1e-4, atol=1e-4 * scale)
    if DEVICE == "cpu":  # float32, not TF32 (one TF32 product would be off by about 1e-3)
        torch.testing.assert_close(got[0], results["ieee"][0], rtol=1e-6, atol=0)


def test_precision_is_checked():
    from cxlib.contextual.fused import fused_similarity, launch_config

    x = torch.randn(1, 5, 32, device=DEVICE)
    with pytest.raises(ValueError, match=r"precision must be one of \('ieee', 'tf32x3'\), got 'tf32'"):
        fused_similarity(x, x, distance="cosine", band_width=0.5, eps=1e-5, precision="tf32")
    with pytest.raises(ValueError, match=r"precision must be one of \('ieee', 'tf32x3'\), got 'bf16'"):
        launch_config("_row_stats", 32, "cosine", "bf16")
    # tf32x3 only where the channels are a multiple of 16 above 16 (elsewhere its variants spilled).
    assert [launch_config("_grad_x", c, "l2", "tf32x3")["PRECISION"] for c in (16, 17, 32, 48, 512)] == \
        ["ieee", "ieee", "tf32x3", "tf32x3", "tf32x3"]
    assert launch_config("_grad_x", 64, "l2", "tf32x3")["BLOCK_CO"] == 16
    assert launch_config("_grad_x", 64, "l2", "ieee")["BLOCK_CO"] == 64


def test_backward_is_checked_and_one_pass_configured():
    from cxlib.contextual.fused import fused_similarity, launch_config

    x = torch.randn(1, 5, 32, device=DEVICE)
    with pytest.raises(ValueError, match=r"backward must be one of \('two-kernels', 'one-pass'\), got 'flash'"):
        fused_similarity(x, x, distance="cosine", band_width=0.5, eps=1e-5, backward="flash")
    # 16 channels at a time in the one-pass kernels (larger blocks spill, see fused.py).
    assert launch_config("_grad_rows", 128, "cosine")["BLOCK_CO"] == 16
    assert launch_config("_grad_rows", 128, "cosine")["NEED_Y"] is False
    assert launch_config("_grad_rows_xy", 128, "cosine")["BLOCK_CO"] == 16
    assert launch_config("_grad_rows_xy", 128, "cosine")["NEED_Y"] is True


@pytest.mark.parametrize("precision", ["ieee", "tf32x3"])
def test_one_pass_equals_two_kernels_with_a_fixed_target(precision):
    """x's gradient alone (the training case) through _grad_rows: no atomics, so on the CPU the
    same sums in the same order as _grad_x, to the last bit; 96 channels, 2 blocks of 64 there."""
    from cxlib.contextual.fused import fused_similarity

    g = torch.Generator().manual_seed(3)
    x = torch.nn.functional.normalize(torch.randn(2, 70, 96, generator=g), dim=-1).to(DEVICE)
    y = torch.nn.functional.normalize(torch.randn(2, 130, 96, generator=g), dim=-1).to(DEVICE)
    grads = {}
    for backward in ("two-kernels", "one-pass"):
        leaf = x.clone().requires_grad_()
        score = fused_similarity(leaf, y, distance="cosine", band_width=0.5, eps=1e-5,
                                 precision=precision, backward=backward)
        (grads[backward],) = torch.autograd.grad(score.sum(), leaf)
    if DEVICE == "cpu":
        assert torch.equal(grads["one-pass"], grads["two-kernels"])
    else:
        torch.testing.assert_close(grads["one-pass"], grads["two-kernels"], rtol=1e-5, atol=1e-7)


def test_one_pass_refuses_deterministic_mode_when_y_needs_a_gradient():
    from cxlib.contextual.fused import fused_similarity

    x = torch.nn.functional.normalize(torch.randn(1, 9, 16, device=DEVICE), dim=-1)
    y = x.clone().requires_grad_()
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match="use backward='two-kernels'"):
            fused_similarity(x, y, distance="cosine", band_width=0.5, eps=1e-5, backward="one-pass")
        # a fixed target has no atomic adds: allowed
        leaf = x.clone().requires_grad_()
        fused_similarity(leaf, y.detach(), distance="cosine", band_width=0.5, eps=1e-5,
                         backward="one-pass").sum().backward()
        assert torch.isfinite(leaf.grad).all()
    finally:
        torch.use_deterministic_algorithms(False)


def test_one_pass_with_one_channel_runs_the_two_kernel_backward():
    from cxlib.contextual.fused import fused_similarity

    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(1, 9, 1, generator=g).to(DEVICE), torch.randn(1, 11, 1, generator=g).to(DEVICE)
    grads = {}
    for backward in ("two-kernels", "one-pass"):
        xl, yl = x.clone().requires_grad_(), y.clone().requires_grad_()
        score = fused_similarity(xl, yl, distance="l2", band_width=0.5, eps=1e-5, backward=backward)
        grads[backward] = torch.autograd.grad(score.sum(), (xl, yl))
    for a, b in zip(grads["one-pass"], grads["two-kernels"]):
        assert torch.equal(a, b)
