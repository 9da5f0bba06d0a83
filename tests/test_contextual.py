"""The contextual similarity and loss against the float64 NumPy reference and the paper's cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import cxlib
import numpy_reference as ref

DISTANCES = ["cosine", "l2", "l1"]
PATHS = ["full", "blocked"]


def _pair(dtype=torch.float64, batch=2, channels=6, x_size=(5, 4), y_size=(3, 4)):
    x = torch.randn(batch, channels, *x_size, dtype=dtype)
    y = torch.randn(batch, channels, *y_size, dtype=dtype)
    return x, y


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("band_width", [0.1, 0.5, 2.0])
@pytest.mark.parametrize("implementation", PATHS)
def test_similarity_matches_numpy_reference(distance, band_width, implementation):
    x, y = _pair()  # B = 2, |X| = 20 != |Y| = 12
    got = cxlib.contextual_similarity(
        x, y, band_width=band_width, distance=distance, implementation=implementation,
        block_size=3 if implementation == "blocked" else None,
    )
    want = ref.contextual_similarity(x.numpy(), y.numpy(), band_width, 1e-5, distance)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("distance", DISTANCES)
def test_loss_matches_numpy_reference_in_float32(distance):
    x, y = _pair(dtype=torch.float32)
    got = cxlib.contextual_loss(x, y, distance=distance, reduction="none")
    want = -np.log(ref.contextual_similarity(x.double().numpy(), y.double().numpy(), 0.5, 1e-5, distance))
    np.testing.assert_allclose(got.numpy(), want, rtol=2e-4)


def test_reductions():
    x, y = _pair()
    per_sample = cxlib.contextual_loss(x, y, reduction="none")
    want = -np.log(ref.contextual_similarity(x.numpy(), y.numpy()))
    np.testing.assert_allclose(per_sample.numpy(), want, rtol=1e-12)
    assert cxlib.contextual_loss(x, y, reduction="sum").item() == pytest.approx(want.sum(), rel=1e-12)
    assert cxlib.contextual_loss(x, y).item() == pytest.approx(want.mean(), rel=1e-12)


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("implementation", PATHS)
def test_identical_sets_give_similarity_one(distance, implementation):
    y = torch.randn(2, 16, 6, 6)
    score = cxlib.contextual_similarity(y, y, distance=distance, implementation=implementation)
    torch.testing.assert_close(score, torch.ones(2), rtol=0, atol=1e-5)
    loss = cxlib.contextual_loss(y, y, distance=distance, implementation=implementation)
    assert 0.0 <= loss.item() < 1e-5


def test_far_apart_sets_give_one_over_n_cosine():
    # After centring by mu_y, every x_i is orthogonal to every y_j: all d_ij = 1, CX_ij = 1/N.
    n_side = 4
    y = torch.zeros(1, 8, n_side, n_side, dtype=torch.float64)
    y[:, :4] = torch.randn(1, 4, n_side, n_side, dtype=torch.float64)
    y[:, :4] -= y[:, :4].mean(dim=(2, 3), keepdim=True)  # mu_y = 0
    x = torch.zeros(1, 8, 3, 3, dtype=torch.float64)
    x[:, 4:] = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    score = cxlib.contextual_similarity(x, y)
    assert score.item() == pytest.approx(1 / n_side**2, rel=1e-12)
    assert cxlib.contextual_loss(x, y).item() == pytest.approx(math.log(n_side**2), rel=1e-12)


def test_far_apart_sets_approach_one_over_n_l2():
    y = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64) + 1e4
    score = cxlib.contextual_similarity(x, y, distance="l2")
    assert score.item() == pytest.approx(1 / 25, rel=1e-3)


def test_partially_shared_features():
    # Half of Y appears in X exactly, the rest of X is far away: those target points are matched
    # with CX_ij close to 1, the others with about 1/N.
    y = torch.randn(1, 32, 1, 16, dtype=torch.float64)
    x = y.clone()
    x[..., 8:] = torch.randn(1, 32, 1, 8, dtype=torch.float64) * 1e-3 + 50.0
    m = cxlib.contextual_matrices(x, y, band_width=0.1)
    assert torch.all(m.best_similarity[:8] > 0.999)
    assert m.best_match[:8].tolist() == list(range(8))
    assert 0.5 < m.score.item() < 0.6


@pytest.mark.parametrize("distance", DISTANCES)
def test_invariant_to_shuffling_x_positions(distance):
    x, y = _pair()
    flat = x.flatten(2)
    shuffled = flat[:, :, torch.randperm(flat.shape[2])].reshape(2, 6, 4, 5)
    a = cxlib.contextual_similarity(x, y, distance=distance)
    b = cxlib.contextual_similarity(shuffled, y, distance=distance)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("implementation", PATHS)
def test_gradcheck_float64(distance, implementation):
    x, y = _pair(batch=2, channels=4, x_size=(3, 3), y_size=(2, 3))
    x.requires_grad_()
    y.requires_grad_()

    def loss(a, b):
        return cxlib.contextual_loss(
            a, b, band_width=0.5, distance=distance, implementation=implementation,
            block_size=4 if implementation == "blocked" else None, reduction="none",
        )

    assert torch.autograd.gradcheck(loss, (x, y), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("block_size", [1, 5, 7, 64])
def test_blocked_equals_full(distance, block_size):
    x, y = _pair(batch=3, channels=8, x_size=(6, 5), y_size=(4, 5))
    x.requires_grad_()
    y.requires_grad_()
    upstream = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)

    def run(implementation):
        score = cxlib.contextual_similarity(
            x, y, band_width=0.2, distance=distance, implementation=implementation,
            block_size=block_size if implementation == "blocked" else None,
        )
        return (score, *torch.autograd.grad(score, (x, y), upstream))

    for full, blocked in zip(run("full"), run("blocked")):
        torch.testing.assert_close(blocked, full, rtol=1e-10, atol=1e-13)


def _graph_node_names(tensor):
    names, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and type(node).__name__ not in names:
            names.add(type(node).__name__)
            stack.extend(next_node for next_node, _ in node.next_functions)
    return names


def test_auto_switches_to_blocked_above_the_threshold_with_equal_results():
    side = 48  # 48**4 = 5.3M elements > AUTO_FULL_MAX_ELEMENTS
    assert side**4 > cxlib.contextual.paths.AUTO_FULL_MAX_ELEMENTS
    x = torch.randn(1, 8, side, side, requires_grad=True)
    y = torch.randn(1, 8, side, side)
    auto = cxlib.contextual_loss(x, y)
    assert "_BlockedSimilarityBackward" in _graph_node_names(auto)
    (grad_auto,) = torch.autograd.grad(auto, x)
    full = cxlib.contextual_loss(x, y, implementation="full")
    assert "_BlockedSimilarityBackward" not in _graph_node_names(full)
    (grad_full,) = torch.autograd.grad(full, x)
    torch.testing.assert_close(auto, full, rtol=1e-5, atol=1e-6)
    scale = grad_full.abs().max().item()
    torch.testing.assert_close(grad_auto, grad_full, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("implementation", PATHS)
@pytest.mark.parametrize("distance", DISTANCES)
def test_no_nan_at_small_band_width_or_duplicated_features(implementation, distance):
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    y = torch.randn(2, 8, 5, 5)
    y[:, :, 0] = y[:, :, 1]  # duplicated target rows
    dup = torch.ones(2, 8, 5, 5, requires_grad=True)  # every generated feature identical
    for a in (x, dup):
        for h in (0.01, 1e-4):
            loss = cxlib.contextual_loss(a, y, band_width=h, distance=distance,
                                         implementation=implementation)
            (grad,) = torch.autograd.grad(loss, a)
            assert torch.isfinite(loss) and torch.isfinite(grad).all()
    # A target whose features are all equal: centred, they are all zero.
    flat = torch.ones(2, 8, 5, 5)
    loss = cxlib.contextual_loss(x, flat, band_width=0.01, distance=distance,
                                 implementation=implementation)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_small_band_width_value_matches_reference():
    x, y = _pair()
    got = cxlib.contextual_similarity(x, y, band_width=0.01)
    want = ref.contextual_similarity(x.numpy(), y.numpy(), 0.01, 1e-5, "cosine")
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)


def _entry_points(eps, implementation):
    """Every public entry point that takes the contextual settings, called on one pair."""
    x, y = _pair(dtype=torch.float32)
    both = dict(eps=eps, implementation=implementation)
    return {
        "contextual_loss": lambda: cxlib.contextual_loss(x, y, **both),
        "contextual_similarity": lambda: cxlib.contextual_similarity(x, y, **both),
        "ContextualLoss": lambda: cxlib.ContextualLoss(**both),
        "contextual_bilateral_loss": lambda: cxlib.contextual_bilateral_loss(x, y, **both),
        "ContextualBilateralLoss": lambda: cxlib.ContextualBilateralLoss(**both),
        "VGGContextualLoss": lambda: cxlib.VGGContextualLoss(weights=None, **both),
        "contextual_matrices": lambda: cxlib.contextual_matrices(x[:1], y[:1], eps=eps),
    }


@pytest.mark.parametrize("implementation", ["full", "blocked", "fused", "auto"])
def test_eps_zero_is_refused_on_every_path_and_entry_point(implementation):
    for name, call in _entry_points(0.0, implementation).items():
        with pytest.raises(ValueError, match=r"eps must be > 0, got 0\.0"):
            call()
            pytest.fail(f"{name} took eps=0")


def _available_paths():
    from cxlib.contextual.fused import fused_available

    return ["full", "blocked"] + (["fused"] if fused_available("cpu") else [])


@pytest.mark.parametrize("distance", ["cosine", "l2"])
@pytest.mark.parametrize("case", ["exact", "repeated targets", "near duplicates"])
def test_the_smallest_eps_keeps_values_and_gradients_finite(distance, case):
    # Exact or nearly exact matches make the denominator of Eq. 2 about eps alone, and a cosine
    # minimum can round a little below 0; at eps = 1e-12 the blocked and fused backward passes
    # returned NaN (a boolean mask times an infinite term) before.
    g = torch.Generator().manual_seed(3)
    y_once = torch.randn(2, 6, 3, 4, generator=g)
    if case == "exact":
        x, y = y_once, y_once
    elif case == "repeated targets":
        x, y = y_once, torch.cat([y_once, y_once], dim=3)
    else:
        x = y_once + 1e-3 * torch.randn(y_once.shape, generator=g)
        y = torch.cat([y_once, y_once], dim=3)
    for implementation in _available_paths():
        xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
        loss = cxlib.contextual_loss(xg, yg, eps=1e-12, distance=distance,
                                     implementation=implementation, block_size=5)
        grad_x, grad_y = torch.autograd.grad(loss, (xg, yg))
        n = y[0, 0].numel()
        assert torch.isfinite(loss) and 0.0 <= loss.item() <= math.log(n) + 1e-6, implementation
        assert torch.isfinite(grad_x).all() and torch.isfinite(grad_y).all(), implementation


def test_eps_below_the_smallest_is_refused():
    x, y = _pair(dtype=torch.float32)
    with pytest.raises(ValueError, match=r"eps must be >= 1e-12 .* got 1e-30"):
        cxlib.contextual_loss(x, y, eps=1e-30)
    assert torch.isfinite(cxlib.contextual_loss(x, y, eps=1e-12))


@pytest.mark.parametrize("distance", DISTANCES)
def test_repeated_target_points_agree_on_every_path(distance):
    # Each target point appears twice and x is the target's distinct points: every row has two
    # nearest columns at distance 0, so CX_ij = 1/2 at both and the loss is log 2 (up to the
    # weight of the other columns, below 1e-6 at h = 0.5).
    y_once = torch.randn(2, 6, 3, 4, dtype=torch.float64)
    y = torch.cat([y_once, y_once], dim=3)
    x = y_once
    want = -np.log(ref.contextual_similarity(x.numpy(), y.numpy(), 0.5, 1e-5, distance))
    np.testing.assert_allclose(want, math.log(2), atol=1e-4)
    for implementation, block_size in (("full", None), ("blocked", 1), ("blocked", 5),
                                       ("blocked", None)):
        got = cxlib.contextual_loss(x, y, distance=distance, reduction="none",
                                    implementation=implementation, block_size=block_size)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, err_msg=f"{implementation} {block_size}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype):
    x, y = _pair(dtype=torch.float32)
    got = cxlib.contextual_loss(x.to(dtype), y.to(dtype), reduction="none")
    assert got.dtype == torch.float32  # returned in float32 too, as autocast's own losses are
    want = cxlib.contextual_loss(x.to(dtype).float(), y.to(dtype).float(), reduction="none")
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_module_equals_function():
    x, y = _pair()
    settings = dict(band_width=0.3, eps=1e-4, distance="l2", reduction="sum")
    module = cxlib.ContextualLoss(**settings)
    assert module(x, y).item() == cxlib.contextual_loss(x, y, **settings).item()
    assert "band_width=0.3" in repr(module)


def test_module_hyper_parameters_are_keyword_only():
    with pytest.raises(TypeError):
        cxlib.ContextualLoss(0.5)  # type: ignore[misc]


def test_contextual_matrices_match_reference_and_function():
    x = torch.randn(5, 4, 3, dtype=torch.float64)
    y = torch.randn(5, 2, 3, dtype=torch.float64)
    for distance in DISTANCES:
        m = cxlib.contextual_matrices(x, y, band_width=0.3, distance=distance)
        want = ref.contextual_intermediates(
            ref.point_sets(x[None].numpy())[0], ref.point_sets(y[None].numpy())[0],
            0.3, 1e-5, distance,
        )
        for name in ("distance", "relative_distance", "weights", "similarity", "best_similarity"):
            np.testing.assert_allclose(getattr(m, name).numpy(), want[name], rtol=1e-10, atol=1e-14)
        np.testing.assert_array_equal(m.best_match.numpy(), want["best_match"])
        assert m.score.item() == pytest.approx(want["score"], rel=1e-12)
        assert m.loss.item() == pytest.approx(-math.log(want["score"]), rel=1e-12)
        np.testing.assert_allclose(m.similarity.sum(-1).numpy(), 1.0, rtol=1e-12)
        np.testing.assert_allclose(m.mu_y.numpy(), y.flatten(1).mean(1).numpy(), rtol=1e-12)
        score = cxlib.contextual_similarity(x[None], y[None], band_width=0.3, distance=distance)
        assert score.item() == pytest.approx(m.score.item(), rel=1e-12)


def test_contextual_matrices_takes_one_sample():
    with pytest.raises(ValueError, match=r"one sample: expected \(C, H, W\) or \(1, C, H, W\)"):
        cxlib.contextual_matrices(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4))


class TestSampling:
    def test_no_sampling_when_maps_are_small_enough(self):
        x, y = _pair()
        exact = cxlib.contextual_similarity(x, y)
        sampled = cxlib.contextual_similarity(x, y, sample_positions=20)
        torch.testing.assert_close(sampled, exact, rtol=0, atol=0)

    def test_same_positions_in_both_maps_of_equal_size(self):
        x, y = _pair(x_size=(4, 4), y_size=(4, 4))
        got = cxlib.contextual_similarity(
            x, y, sample_positions=7, generator=torch.Generator().manual_seed(3)
        )
        index = torch.randperm(16, generator=torch.Generator().manual_seed(3))[:7]
        xs = x.flatten(2)[:, :, index].unsqueeze(-1)
        ys = y.flatten(2)[:, :, index].unsqueeze(-1)
        want = ref.contextual_similarity(xs.numpy(), ys.numpy())
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)

    def test_sampling_is_reproducible_with_a_generator(self):
        x, y = _pair(x_size=(8, 8), y_size=(8, 8))
        a = cxlib.contextual_loss(x, y, sample_positions=10, generator=torch.Generator().manual_seed(1))
        b = cxlib.contextual_loss(x, y, sample_positions=10, generator=torch.Generator().manual_seed(1))
        assert a.item() == b.item()


class TestBadInput:
    def test_not_a_tensor(self):
        with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
            cxlib.contextual_loss([1.0], torch.randn(1, 2, 3, 3))

    @pytest.mark.parametrize("shape", [(2, 3, 4), (1, 2, 3, 4, 5)])
    def test_not_4d(self, shape):
        with pytest.raises(ValueError, match=r"x must be a 4-D tensor, got \d-D with shape"):
            cxlib.contextual_loss(torch.randn(*shape), torch.randn(1, 2, 3, 3))

    def test_batch_mismatch(self):
        with pytest.raises(ValueError, match=r"same batch size, got x \(2, 3, 4, 4\) and y \(3, 3, 4, 4\)"):
            cxlib.contextual_loss(torch.randn(2, 3, 4, 4), torch.randn(3, 3, 4, 4))

    def test_channel_mismatch(self):
        with pytest.raises(ValueError, match=r"same number of channels, got x \(1, 3, 4, 4\) and y \(1, 5, 4, 4\)"):
            cxlib.contextual_loss(torch.randn(1, 3, 4, 4), torch.randn(1, 5, 4, 4))

    def test_integer_dtype(self):
        with pytest.raises(TypeError, match="floating-point dtype, got torch.int64"):
            cxlib.contextual_loss(torch.ones(1, 3, 4, 4, dtype=torch.long), torch.randn(1, 3, 4, 4))

    def test_dtype_mismatch(self):
        with pytest.raises(TypeError, match="same dtype, got torch.float32 and torch.float64"):
            cxlib.contextual_loss(torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4, dtype=torch.float64))

    def test_empty(self):
        with pytest.raises(ValueError, match="non-empty"):
            cxlib.contextual_loss(torch.randn(0, 3, 4, 4), torch.randn(0, 3, 4, 4))

    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
    def test_non_finite_features(self, bad):
        y = torch.randn(1, 3, 4, 4)
        y[0, 1, 2, 3] = bad
        with pytest.raises(ValueError, match=r"y must be finite, got 1 NaN or inf value\(s\)"):
            cxlib.contextual_loss(torch.randn(1, 3, 4, 4), y)

    @pytest.mark.parametrize("h", [0, -0.5])
    def test_band_width_not_positive(self, h):
        with pytest.raises(ValueError, match=f"band_width must be > 0, got {h}"):
            cxlib.contextual_loss(torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4), band_width=h)
        with pytest.raises(ValueError, match=f"band_width must be > 0, got {h}"):
            cxlib.ContextualLoss(band_width=h)

    def test_band_width_wrong_type(self):
        with pytest.raises(TypeError, match="band_width must be a real number, got str '0.5'"):
            cxlib.ContextualLoss(band_width="0.5")

    def test_eps_negative(self):
        with pytest.raises(ValueError, match="eps must be > 0, got -1e-05"):
            cxlib.contextual_loss(torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4), eps=-1e-5)
        with pytest.raises(ValueError, match="eps must be > 0"):
            cxlib.ContextualLoss(eps=-1.0)

    def test_unknown_distance(self):
        with pytest.raises(ValueError, match="distance must be one of 'cosine', 'l2', 'l1', got 'L2'"):
            cxlib.contextual_loss(torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4), distance="L2")
        with pytest.raises(ValueError, match="distance must be one of"):
            cxlib.ContextualLoss(distance="euclid")

    def test_unknown_reduction(self):
        with pytest.raises(ValueError, match="reduction must be one of 'mean', 'sum', 'none', got 'avg'"):
            cxlib.contextual_loss(torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4), reduction="avg")
        with pytest.raises(ValueError, match="reduction must be one of"):
            cxlib.ContextualLoss(reduction="batchmean")

    def test_unknown_implementation_and_bad_block_size(self):
        x = torch.randn(1, 3, 4, 4)
        with pytest.raises(ValueError, match="implementation must be one of 'auto', 'full', 'blocked'"):
            cxlib.contextual_loss(x, x, implementation="fast")
        with pytest.raises(ValueError, match="block_size must be >= 1, got 0"):
            cxlib.contextual_loss(x, x, block_size=0)
        with pytest.raises(TypeError, match="sample_positions must be an int >= 1 or None, got float"):
            cxlib.ContextualLoss(sample_positions=10.0)


@pytest.mark.parametrize("module_class", ["ContextualLoss", "ContextualBilateralLoss"])
def test_module_positions_follow_its_own_generator(module_class):
    x, y = _pair(batch=2, x_size=(4, 5), y_size=(4, 5))
    module = getattr(cxlib, module_class)(sample_positions=7,
                                          generator=torch.Generator().manual_seed(7))
    torch.manual_seed(123)
    first = module(x, y)
    torch.manual_seed(123)  # the global seed does not decide the positions
    second = module(x, y)
    # Independently: the positions are randperm(20)[:7] of a generator seeded 7, drawn anew at
    # each call, the same for x and y (same size) and for every sample.
    g = torch.Generator().manual_seed(7)
    want = []
    for _ in range(2):
        keep = torch.randperm(20, generator=g)[:7]
        xs, ys = (t.flatten(2)[..., keep].unsqueeze(-1) for t in (x, y))
        if module_class == "ContextualLoss":
            want.append(torch.tensor(ref.contextual_loss(xs, ys), dtype=torch.float64))
        else:
            grid = ref.positions(4, 5)[keep.numpy()]
            sim = [ref.bilateral_similarity_of_points(xb.T, yb.T, grid, grid, 0.1, 0.5, 2e-3,
                                                     "cosine", 1e-3)
                   for xb, yb in zip(xs[..., 0].numpy(), ys[..., 0].numpy())]
            want.append(torch.tensor(-np.log(sim).mean(), dtype=torch.float64))
    torch.testing.assert_close(first, want[0], rtol=1e-10, atol=0)
    torch.testing.assert_close(second, want[1], rtol=1e-10, atol=0)
    assert first.item() != second.item()


def test_generator_is_checked():
    with pytest.raises(TypeError, match=r"generator must be a torch.Generator or None, got int 3 "
                                        r"\(for a seed s, pass torch.Generator\(\).manual_seed\(s\)\)"):
        cxlib.ContextualLoss(sample_positions=4, generator=3)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        x, y = _pair()
        cxlib.contextual_loss(x, y, sample_positions=4, generator="seed")


def test_check_finite_is_one_pass_per_call_and_can_be_switched_off(monkeypatch):
    x, y = _pair(dtype=torch.float32)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"x must be finite, got 1 NaN or inf value\(s\)"):
        cxlib.contextual_loss(x, y)
    with pytest.raises(ValueError, match=r"y must be finite"):
        cxlib.ContextualLoss()(y, x)
    assert torch.isnan(cxlib.contextual_loss(x, y, check_finite=False))
    assert torch.isnan(cxlib.ContextualLoss(check_finite=False)(x, y))
    assert torch.isnan(cxlib.contextual_bilateral_loss(x, y, check_finite=False))
    with pytest.raises(ValueError, match=r"x must be finite"):
        cxlib.ContextualBilateralLoss()(x, y)
    # One synchronising bool() for both inputs when they are fine.
    import cxlib._checks as checks

    syncs = []
    real = checks.check_finite
    monkeypatch.setattr(checks, "check_finite", lambda *a: syncs.append(a) or real(*a))
    cxlib.contextual_loss(y, y)
    assert syncs == []  # the per-tensor counts are only taken on failure


def test_autocast_regions_compute_the_loss_in_float32_and_accept_a_float32_reference():
    """Under autocast the generated features are half precision while a fixed target's are
    float32 (found on an H200 by the GPU check: AMP training raised a dtype TypeError). The pair
    is compared in float32, and the loss's matrix products do not run in half precision."""
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(2, 16, 6, 6, generator=g), torch.randn(2, 16, 5, 5, generator=g)
    want = ref.contextual_loss(x.bfloat16().double(), y.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for implementation in ("full", "blocked"):
            got = cxlib.contextual_loss(x.bfloat16(), y, implementation=implementation)
            # computed and returned in float32 (a float16 loss would overflow a gradient
            # scaler's first scale, 65536)
            assert got.dtype == torch.float32
            assert abs(got.item() - want) < 1e-5
            # float32 on both sides: the same value as outside autocast (a bfloat16 matrix
            # product would be off by about 1e-3)
            inside = cxlib.contextual_loss(x, y, implementation=implementation).item()
            assert abs(inside - ref.contextual_loss(x.double(), y.double())) < 1e-5
    with pytest.raises(TypeError, match="same dtype, got torch.float64 and torch.float32"):
        cxlib.contextual_loss(x.double(), y)


def test_contextual_matrices_under_autocast_equal_the_similarity_outside_it():
    g = torch.Generator().manual_seed(8)
    x, y = torch.randn(1, 8, 5, 5, generator=g), torch.randn(1, 8, 4, 4, generator=g)
    want = cxlib.contextual_similarity(x, y).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        matrices = cxlib.contextual_matrices(x, y)
        half = cxlib.contextual_matrices(x.bfloat16(), y.bfloat16())
    assert matrices.similarity.dtype == torch.float32 and abs(matrices.score.item() - want) < 1e-6
    assert half.similarity.dtype == torch.float32


def test_meta_tensors_pass_through_the_autocast_guard():
    x = torch.randn(1, 4, 3, 3, device="meta")
    assert cxlib.contextual_loss(x, x, check_finite=False).device.type == "meta"


def _near_tied_targets(generator):
    """Features of norm^2 about 300 (where the l2 expansion rounds by about 4e-5, above eps),
    every target point twice, the copy moved by 1e-6, and x the targets plus 1e-6 noise: each
    row's nearest targets are tied to within rounding in float32."""
    y = torch.randn(1, 256, 10, 10, generator=generator) * 1.1 + 0.3
    flat = y.view(256, -1)
    flat[:, 1::2] = flat[:, ::2] + 1e-6 * torch.randn(256, 50, generator=generator)
    return y + 1e-6 * torch.randn(y.shape, generator=generator), y


@pytest.mark.parametrize("implementation", PATHS)
def test_l2_in_float32_splits_near_tied_targets_as_float64_does(implementation):
    # The expansion |x|^2 + |y|^2 - 2 x.y in float32 decided this split by rounding: CX 0.613
    # where the float64 reference gives 0.500 (23%). The rows whose minimum is within the
    # expansion's rounding are now recomputed in float64.
    x, y = _near_tied_targets(torch.Generator().manual_seed(0))
    got = cxlib.contextual_similarity(x, y, distance="l2", implementation=implementation,
                                      block_size=17 if implementation == "blocked" else None)
    want = ref.contextual_similarity(x.double().numpy(), y.double().numpy(), 0.5, 1e-5, "l2")
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    matrices = cxlib.contextual_matrices(x, y, distance="l2")
    np.testing.assert_allclose(matrices.score.item(), want[0], rtol=1e-5)


def test_l2_rows_far_above_their_rounding_keep_the_float32_expansion():
    from cxlib.contextual.distances import L2_REFINE_RATIO, pairwise_distance

    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 30, 8, generator=g), torch.randn(2, 20, 8, generator=g)
    plain = (x.pow(2).sum(-1, keepdim=True) + y.pow(2).sum(-1).unsqueeze(1)
             - 2.0 * torch.bmm(x, y.transpose(1, 2))).clamp_min(0.0)
    assert torch.equal(pairwise_distance("l2", x, y), plain)  # nothing recomputed
    # One near copy makes its row suspect: that row becomes the float64 expansion, cast back;
    # the other rows stay the float32 expansion, bit for bit.
    x[1, 4] = y[1, 7] + 1e-4
    got = pairwise_distance("l2", x, y)
    exact = ((x.double()[:, :, None] - y.double()[:, None]) ** 2).sum(-1)
    np.testing.assert_allclose(got[1, 4].double().numpy(), exact[1, 4].numpy(), rtol=1e-6)
    assert torch.equal(got[0], pairwise_distance("l2", x[:1], y[:1])[0])
    keep = torch.ones(30, dtype=torch.bool)
    keep[4] = False
    assert torch.equal(got[1, keep], (x[1, keep].pow(2).sum(-1, keepdim=True)
                                      + y[1].pow(2).sum(-1)[None]
                                      - 2.0 * x[1, keep] @ y[1].T).clamp_min(0.0))
    assert L2_REFINE_RATIO >= 1e4


def test_l2_float32_gradient_through_recomputed_rows_matches_float64():
    # Near-tied targets 1e-3 apart, x within 1e-3 of them, |y|^2 about 260: before the rows were
    # recomputed, float32 was 10% off in value and the gradient pointed anywhere (relative
    # error 1.1). What is left comes from rounding the centred float32 inputs themselves.
    g = torch.Generator().manual_seed(2)
    y = torch.randn(1, 64, 6, 6, generator=g) * 2.0 + 0.3
    flat = y.view(64, -1)
    flat[:, 1::2] = flat[:, ::2] + 1e-3 * torch.randn(64, 18, generator=g)
    x = y + 1e-3 * torch.randn(y.shape, generator=g)
    for implementation in PATHS:
        x32, x64 = x.clone().requires_grad_(), x.double().requires_grad_()
        settings = dict(distance="l2", implementation=implementation, block_size=7)
        (grad32,) = torch.autograd.grad(cxlib.contextual_loss(x32, y, **settings), x32)
        (grad64,) = torch.autograd.grad(cxlib.contextual_loss(x64, y.double(), **settings), x64)
        assert grad64.norm() > 1.0  # the gradient is not zero: the case tests something
        error = ((grad32.double() - grad64).norm() / grad64.norm()).item()
        assert error < 5e-4, (implementation, error)
        value = cxlib.contextual_similarity(x, y, **settings).item()
        want = ref.contextual_similarity(x.double().numpy(), y.double().numpy(), 0.5, 1e-5, "l2")
        np.testing.assert_allclose(value, want[0], rtol=1e-5)
