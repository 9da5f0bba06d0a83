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
        x, y, weight_sp=0.3, band_width=0.4, eps=1e-5, eps_sp=4e-3, distance=distance,
        reduction="none", implementation=implementation,
        block_size=5 if implementation == "blocked" else None,
    )
    want = -np.log(ref.bilateral_similarity(x.numpy(), y.numpy(), 0.3, 0.4, 1e-5, distance, 4e-3))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-11)


@pytest.mark.parametrize("implementation", ["full", "blocked"])
@pytest.mark.parametrize("side", [5, 32])
def test_defaults_are_the_zoom_to_learn_code(implementation, side):
    # The published code's CoBi, transcribed independently (its (1 - cos) / 2 with 1e-3, its
    # grid of row / H, col / W with 1e-3, h = 0.5, w_sp = 0.1), on one sample: the defaults must
    # give its value. At side 5 the spatial term is the identity to float precision; at side 32
    # neighbouring positions are 1/1024 apart, about eps_sp: a soft prior (diagonal 0.6 to 0.8).
    gen = torch.Generator().manual_seed(side)
    y = torch.randn(1, 6, side, side, generator=gen, dtype=torch.float64)
    x = y + 0.3 * torch.randn(1, 6, side, side, generator=gen, dtype=torch.float64)
    got = cxlib.contextual_bilateral_loss(x, y, implementation=implementation, block_size=7)
    want = ref.zoom_to_learn_cobi(x[0].numpy(), y[0].numpy())
    np.testing.assert_allclose(got.item(), want, rtol=1e-10)
    # Not the old eps: with 1e-5 for both terms the value differs clearly.
    old = cxlib.contextual_bilateral_loss(x, y, eps=1e-5, eps_sp=1e-5)
    assert abs(old.item() - want) > 1e-3


def test_published_eps_follows_the_distance():
    from cxlib.contextual.bilateral import PUBLISHED_EPS, SPATIAL_EPS

    assert PUBLISHED_EPS == {"cosine": 2e-3, "l2": 1e-3, "l1": 1e-3} and SPATIAL_EPS == 1e-3
    x = torch.randn(2, 4, 4, 5, dtype=torch.float64)
    y = torch.randn(2, 4, 5, 4, dtype=torch.float64)
    for distance in ("cosine", "l2", "l1"):
        got = cxlib.contextual_bilateral_loss(x, y, distance=distance, reduction="none")
        want = -np.log(ref.bilateral_similarity(x.numpy(), y.numpy(), 0.1, 0.5,
                                                PUBLISHED_EPS[distance], distance, 1e-3))
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-11)


def test_spatial_similarity_is_the_reference():
    from cxlib.contextual.bilateral import spatial_similarity

    for (height, width), eps_sp in (((6, 6), 1e-3), ((9, 7), 1e-3), ((5, 8), 1e-5)):
        got = spatial_similarity(height, width, band_width=0.4, eps_sp=eps_sp, dtype=torch.float64)
        grid = ref.positions(height, width)
        want = ref.contextual_intermediates(grid, grid, 0.4, eps_sp, "l2")["similarity"]
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-14)
    with pytest.raises(TypeError, match="height must be an int >= 1, got float 2.0"):
        spatial_similarity(2.0, 3)
    with pytest.raises(ValueError, match="band_width must be > 0, got 0"):
        spatial_similarity(2, 3, band_width=0)


def test_spatial_prior_widens_with_the_grid():
    # On a shared grid of side s, CX^sp_jj = 1 when neighbours are far apart in units of eps_sp
    # (1/s^2 >> 1e-3) and spreads once they are not: s = 6 is nearly the identity, s = 64 is not.
    from cxlib.contextual.bilateral import SPATIAL_EPS

    for side, low, high in ((6, 0.99, 1.0), (64, 0.0, 0.5)):
        grid = ref.positions(side, side)
        diag = np.diag(ref.contextual_intermediates(grid, grid, 0.5, SPATIAL_EPS, "l2")["similarity"])
        assert low <= diag.min() and diag.max() <= high, (side, diag.min(), diag.max())


def test_zero_spatial_weight_is_the_contextual_loss_of_the_reference():
    # With weight_sp = 0 the spatial term drops out: the value must be -log CX of the float64
    # NumPy reference of the plain contextual similarity (not cxlib's own contextual_loss, which
    # shares this code path), and the gradient must pass gradcheck.
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    cobi = cxlib.contextual_bilateral_loss(x, y, weight_sp=0.0, band_width=0.2, eps=1e-5,
                                           reduction="none")
    want = -np.log(ref.contextual_similarity(x.detach().numpy(), y.numpy(), 0.2, 1e-5, "cosine"))
    np.testing.assert_allclose(cobi.detach().numpy(), want, rtol=1e-12)
    for implementation in ("full", "blocked"):
        assert torch.autograd.gradcheck(
            lambda a: cxlib.contextual_bilateral_loss(a, y, weight_sp=0.0, band_width=0.2,
                                                      eps=1e-5, implementation=implementation,
                                                      block_size=4),
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
    with pytest.raises(ValueError, match=r"eps_sp must be > 0, got 0.0"):
        cxlib.contextual_bilateral_loss(x, y, eps_sp=0.0)
    with pytest.raises(ValueError, match=r"eps_sp must be >= 1e-12 .*got 1e-13"):
        cxlib.contextual_bilateral_loss(x, y, eps_sp=1e-13)
    with pytest.raises(ValueError, match="eps must be > 0"):
        cxlib.ContextualBilateralLoss(eps=-1.0)
    assert "eps=0.002, eps_sp=0.001" in repr(cxlib.ContextualBilateralLoss())
