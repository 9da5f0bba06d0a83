"""optimize_image, the CNNMRF loss and concat_layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cxlib


def _quadratic(target):
    return lambda x: (x - target).square().sum()


@pytest.mark.parametrize("optimizer,lr,steps", [("adam", 0.05, 300), ("lbfgs", None, 20)])
def test_reaches_the_minimum_of_a_quadratic(optimizer, lr, steps):
    target = torch.rand(1, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    result = cxlib.optimize_image(torch.full_like(target, 0.5), _quadratic(target), steps=steps,
                                  lr=lr, optimizer=optimizer, progress=False)
    torch.testing.assert_close(result.image, target, rtol=0, atol=2e-3)
    assert 2 <= len(result.losses) <= steps + 1
    assert result.losses[-1] < 1e-4 < result.losses[0]
    assert not result.interrupted and result.seconds > 0


def _bounded_quadratic_optimum(a, target, low, high, iterations=20000):
    """argmin over the box [low, high]^n of (x - t)^T A (x - t), by projected gradient descent
    in float64 (converges for a positive definite A with step 1 / (2 lambda_max))."""
    step = 1.0 / (2.0 * np.linalg.eigvalsh(a).max())
    x = np.clip(target, low, high)
    for _ in range(iterations):
        x = np.clip(x - step * 2.0 * a @ (x - target), low, high)
    return x


def test_lbfgs_finds_the_bounded_optimum_when_the_unbounded_one_is_outside():
    # A coupled quadratic whose unbounded minimum (the target) lies partly outside [0, 1]: the
    # bounded minimum is not the clipped target, and clipping after plain L-BFGS steps misses it.
    g = np.random.default_rng(4)
    n = 12
    m = g.normal(size=(n, n))
    a = m @ m.T / n + 0.1 * np.eye(n)
    target = g.uniform(-0.6, 1.6, size=n)
    want = _bounded_quadratic_optimum(a, target, 0.0, 1.0)
    assert np.abs(want - np.clip(target, 0, 1)).max() > 0.05  # the case is not trivial
    assert ((want == 0) | (want == 1)).sum() >= 2  # bounds are active at the optimum
    a_t, t_t = torch.from_numpy(a), torch.from_numpy(target)

    def loss_fn(image):
        r = image.double().flatten() - t_t
        return r @ a_t @ r

    result = cxlib.optimize_image(torch.full((1, 1, 3, 4), 0.5), loss_fn, steps=100,
                                  optimizer="lbfgs", progress=False)
    got = result.image.double().flatten().numpy()
    np.testing.assert_allclose(got, want, atol=2e-4)
    assert got.min() >= 0.0 and got.max() <= 1.0
    assert result.losses == sorted(result.losses, reverse=True)  # L-BFGS-B never goes up


def test_pixels_are_kept_in_range_and_init_is_untouched():
    init = torch.full((1, 1, 3, 3), 0.5)
    for optimizer, lr in (("adam", 0.1), ("lbfgs", None)):
        result = cxlib.optimize_image(init, lambda x: -x.sum(), steps=50, lr=lr,
                                      optimizer=optimizer, progress=False)
        assert torch.all(result.image == 1.0) and torch.all(init == 0.5), optimizer
        low = cxlib.optimize_image(init, lambda x: x.sum(), steps=50, lr=lr, value_range=(-1, 2),
                                   optimizer=optimizer, progress=False)
        assert torch.all(low.image == -1.0), optimizer


def test_snapshots_callback_and_determinism():
    target = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    seen = []
    a = cxlib.optimize_image(torch.zeros_like(target), _quadratic(target), steps=10, lr=0.1,
                             snapshot_every=4, callback=lambda s, img, loss: seen.append((s, loss)),
                             progress=False)
    b = cxlib.optimize_image(torch.zeros_like(target), _quadratic(target), steps=10, lr=0.1,
                             progress=False)
    assert [s for s, _ in a.snapshots] == [0, 4, 8, 10]
    torch.testing.assert_close(a.snapshots[-1][1], a.image, rtol=0, atol=0)
    assert [s for s, _ in seen] == list(range(1, 11))
    assert [loss for _, loss in seen] == a.losses[:10]
    assert torch.equal(a.image, b.image) and a.losses == b.losses


def test_interrupt_returns_what_was_reached():
    target = torch.rand(1, 3, 4, 4)

    def stop_at_five(step, image, loss):
        if step == 5:
            raise KeyboardInterrupt

    result = cxlib.optimize_image(torch.zeros_like(target), _quadratic(target), steps=100, lr=0.1,
                                  callback=stop_at_five, progress=False)
    assert result.interrupted and len(result.losses) == 5
    assert result.losses[-1] > 0 and not torch.equal(result.image, torch.zeros_like(target))


def test_bad_arguments():
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match="optimizer must be one of 'adam', 'lbfgs', got 'sgd'"):
        cxlib.optimize_image(x, lambda i: i.sum(), steps=1, lr=0.1, optimizer="sgd")
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        cxlib.optimize_image(x, lambda i: i.sum(), steps=0, lr=0.1)
    with pytest.raises(ValueError, match="lr must be > 0"):
        cxlib.optimize_image(x, lambda i: i.sum(), steps=1, lr=0.0)
    with pytest.raises(ValueError, match=r"optimizer='adam' needs a learning rate: pass lr="):
        cxlib.optimize_image(x, lambda i: i.sum(), steps=1)
    with pytest.raises(ValueError, match=r"takes no lr, got lr=1\.0: pass lr=None"):
        cxlib.optimize_image(x, lambda i: i.sum(), steps=1, lr=1.0, optimizer="lbfgs")
    with pytest.raises(ValueError, match="value_range must be"):
        cxlib.optimize_image(x, lambda i: i.sum(), steps=1, lr=0.1, value_range=(1, 0))
    with pytest.raises(ValueError, match="loss_fn must return a scalar tensor"):
        cxlib.optimize_image(x, lambda i: i, steps=1, lr=0.1, progress=False)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        cxlib.optimize_image(x, 3, steps=1, lr=0.1)


def _mrf_reference(x, y, k):
    """Brute force in NumPy: every k x k patch of x against every patch of y."""
    def patches(f):
        c, h, w = f.shape
        return np.array([f[:, r:r + k, q:q + k].ravel() for r in range(h - k + 1) for q in range(w - k + 1)])

    out = []
    for xb, yb in zip(x, y):
        px, py = patches(xb), patches(yb)
        ncc = (px / np.linalg.norm(px, axis=1, keepdims=True)) @ (py / np.linalg.norm(py, axis=1, keepdims=True)).T
        nearest = py[ncc.argmax(axis=1)]
        out.append(((px - nearest) ** 2).mean())
    return np.array(out)


def test_mrf_loss_matches_brute_force_and_has_the_right_gradient():
    x = torch.randn(2, 4, 6, 7, dtype=torch.float64)
    y = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    got = cxlib.mrf_loss(x, y, patch_size=3, reduction="none")
    np.testing.assert_allclose(got.numpy(), _mrf_reference(x.numpy(), y.numpy(), 3), rtol=1e-12)
    assert cxlib.mrf_loss(y, y).item() == 0.0
    xg = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a: cxlib.mrf_loss(a, y), (xg,))
    with pytest.raises(ValueError, match="at least 3x3"):
        cxlib.mrf_loss(torch.zeros(1, 2, 2, 5), torch.zeros(1, 2, 5, 5))


def test_concat_layers_resizes_scales_and_stacks():
    a = torch.randn(1, 2, 8, 8)
    b = torch.randn(1, 4, 4, 4)
    out = cxlib.concat_layers({"a": a, "b": b}, ["a", "b"])
    assert out.shape == (1, 6, 8, 8)
    torch.testing.assert_close(out[:, :2], a / 2)
    up = torch.nn.functional.interpolate(b, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[:, 2:], up / 4)
    assert cxlib.concat_layers({"a": a, "b": b}, ["b", "a"]).shape == (1, 6, 4, 4)
    with pytest.raises(ValueError, match=r"features has no layers \['c'\]"):
        cxlib.concat_layers({"a": a}, ["a", "c"])


def test_lbfgs_interrupt_returns_the_last_iterate():
    g = torch.Generator().manual_seed(5)
    m = torch.randn(48, 48, generator=g)
    a = m @ m.T / 48 + 0.01 * torch.eye(48)
    target = torch.rand(48, generator=g)

    def loss_fn(image):
        r = image.flatten() - target
        return r @ a @ r

    seen = []

    def stop_at_three(step, image, loss):
        seen.append(image.clone())
        if step == 3:
            raise KeyboardInterrupt

    result = cxlib.optimize_image(torch.zeros(1, 3, 4, 4), loss_fn, steps=50, optimizer="lbfgs",
                                  callback=stop_at_three, progress=False)
    assert result.interrupted and len(result.losses) == 4
    torch.testing.assert_close(result.image, seen[-1], rtol=0, atol=0)
    assert result.losses[-1] == pytest.approx(float(loss_fn(result.image)), rel=1e-6)


def test_lbfgs_that_converges_early_still_ends_with_a_snapshot_of_the_result():
    target = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(2)) * 2 - 0.5
    result = cxlib.optimize_image(torch.zeros_like(target), _quadratic(target), steps=50,
                                  optimizer="lbfgs", snapshot_every=10, progress=False)
    done = len(result.losses) - 1
    assert done < 50  # a separable quadratic with bounds: solved in a few iterations
    assert [s for s, _ in result.snapshots] == [0, done]
    torch.testing.assert_close(result.snapshots[-1][1], result.image, rtol=0, atol=0)
    torch.testing.assert_close(result.image, target.clamp(0, 1), rtol=0, atol=1e-5)
