"""The contextual bilateral loss (CoBi) against the NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cxlib
import numpy_reference as ref


@pytest.mark.parametrize("distance", ["cosine", "l2", "l1"])
@pytest.mark.parametrize("implementation", ["full", "blocked"])
def test_matches_numpy_reference(distance, implementation):
    x = torch.randn(2, 5, 4, 3, dtype=torch.float64)
    y = torch.randn(2, 5, 3, 5, dtype=torch.float64)
    got = cxlib.contextual_bilateral_loss(
        x, y, weight_sp=0.3, band_width=0.4, distance=distance, reduction="none",
        implementation=implementation, block_size=5 if implementation == "blocked" else None,
    )
    want = -np.log(ref.bilateral_similarity(x.numpy(), y.numpy(), 0.3, 0.4, 1e-5, distance))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-11)


def test_zero_spatial_weight_is_the_contextual_loss_of_the_reference():
    # With weight_sp = 0 the spatial term drops out: the value must be -log CX of the float64
    # NumPy reference of the plain contextual similarity (not cxlib's own contextual_loss, which
    # shares this code path), and the gradient must pass gradcheck.
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    cobi = cxlib.contextual_bilateral_loss(x, y, weight_sp=0.0, band_width=0.2, reduction="none")
    want = -np.log(ref.contextual_similarity(x.detach().numpy(), y.numpy(), 0.2, 1e-5, "cosine"))
    np.testing.assert_allclose(cobi.detach().numpy(), want, rtol=1e-12)
    for implementation in ("full", "blocked"):
        assert torch.autograd.gradcheck(
            lambda a: cxlib.contextual_bilateral_loss(a, y, weight_sp=0.0, band_width=0.2,
                                                      implementation=implementation, block_size=4),
            (x,))


def test_spatial_term_prefers_the_match_at_the_same_place():
    # Two identical features at different places of y: with weight_sp > 0 the one at the same
    # place as x's wins, and a shifted copy of y scores lower than y itself.
    y = torch.randn(1, 8, 6, 6, dtype=torch.float64)
    shifted = torch.roll(y, shifts=3, dims=3)
    plain = [cxlib.contextual_loss(a, y).item() for a in (y, shifted)]
    cobi = [cxlib.contextual_bilateral_loss(a, y, weight_sp=0.5).item() for a in (y, shifted)]
    assert plain[1] == pytest.approx(plain[0], abs=1e-6)  # CX alone does not see the shift
    assert cobi[1] > cobi[0] + 0.05


@pytest.mark.parametrize("implementation", ["full", "blocked"])
def test_gradcheck_float64(implementation):
    x = torch.randn(1, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(1, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: cxlib.contextual_bilateral_loss(
            a, b, weight_sp=0.2, implementation=implementation, block_size=2),
        (x, y),
    )


def test_blocked_equals_full_with_sampling():
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    values = []
    for implementation in ("full", "blocked"):
        loss = cxlib.contextual_bilateral_loss(
            x, y, implementation=implementation, block_size=7, sample_positions=40,
            generator=torch.Generator().manual_seed(5))
        values.append((loss, *torch.autograd.grad(loss, x)))
    for full, blocked in zip(*values):
        torch.testing.assert_close(blocked, full, rtol=1e-10, atol=1e-13)


def test_module_equals_function_and_checks_arguments():
    x, y = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    module = cxlib.ContextualBilateralLoss(weight_sp=0.25, band_width=0.3)
    assert module(x, y).item() == cxlib.contextual_bilateral_loss(x, y, weight_sp=0.25, band_width=0.3).item()
    with pytest.raises(ValueError, match=r"weight_sp must be in \[0, 1\], got 1.5"):
        cxlib.ContextualBilateralLoss(weight_sp=1.5)
    with pytest.raises(ValueError, match="weight_sp must be >= 0"):
        cxlib.contextual_bilateral_loss(x, y, weight_sp=-0.1)
    with pytest.raises(TypeError):
        cxlib.contextual_bilateral_loss(x, y, 0.5)  # type: ignore[misc]  # keyword-only
