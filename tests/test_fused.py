"""The fused Triton kernels, run under Triton's interpreter on the CPU (on a GPU with
CXLIB_TEST_DEVICE=cuda): values within 1e-5 and gradients within 1e-4 of a float64 reference."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import cxlib
import numpy_reference as ref
from autograd_graph import node_names
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


@pytest.mark.parametrize("distance", ["cosine", "l2"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}C{c[1]}")
def test_gradients_match_float64_full_path(distance, case):
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
