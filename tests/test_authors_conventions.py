"""Where the authors' TensorFlow code differs from the paper, and the sizes contextual_loss's
docstring quotes: a float64 NumPy transcription of the code's two conventions, (1 - cos)/2 and
centring by the mean of the targets over the whole batch."""

from __future__ import annotations

import numpy as np
import numpy_reference as ref
import pytest
import torch

import cxlib


def _authors_loss(x, y, band_width=0.5, eps=1e-5, *, half_cosine=True, batch_centring=True):
    """-log CX per sample with the code's conventions (each can be switched off)."""
    xs, ys = ref.point_sets(x), ref.point_sets(y)
    batch_mean = ys.reshape(-1, ys.shape[-1]).mean(0)
    out = []
    for xb, yb in zip(xs, ys):
        mu = batch_mean if batch_centring else yb.mean(0)
        a, b = xb - mu, yb - mu
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        d = 1.0 - a @ b.T
        if half_cosine:
            d = d / 2.0
        relative = d / (d.min(axis=1, keepdims=True) + eps)
        w = np.exp((1.0 - relative) / band_width)
        cx = w / w.sum(axis=1, keepdims=True)
        out.append(-np.log(cx.max(axis=0).mean()))
    return np.array(out)


def _cxlib_loss(x, y, band_width=0.5, eps=1e-5):
    return cxlib.contextual_loss(torch.from_numpy(x), torch.from_numpy(y), band_width=band_width,
                                 eps=eps, reduction="none").numpy()


def test_the_transcription_with_the_papers_conventions_is_cxlib():
    g = np.random.default_rng(1)
    y = g.normal(size=(2, 16, 5, 5))
    x = y + g.normal(size=y.shape)
    paper = _authors_loss(x, y, half_cosine=False, batch_centring=False)
    np.testing.assert_allclose(_cxlib_loss(x, y), paper, rtol=1e-12)


def test_half_cosine_is_a_doubled_eps_and_moves_the_loss_by_at_most_about_1e_4():
    g = np.random.default_rng(0)
    worst = 0.0
    for _ in range(20):
        channels, side = int(g.integers(3, 64)), int(g.integers(3, 12))
        y = g.normal(size=(2, channels, side, side))
        x = y + g.normal(size=y.shape) * g.uniform(0, 1.5)
        for h in (0.1, 0.5, 1.0):
            code = _authors_loss(x, y, h, batch_centring=False)
            # (d / 2) / (min d / 2 + eps) = d / (min d + 2 eps): the same values, exactly.
            np.testing.assert_allclose(_cxlib_loss(x, y, h, eps=2e-5), code, rtol=1e-10, atol=1e-13)
            worst = max(worst, np.abs(code - _cxlib_loss(x, y, h)).max())
    assert 1e-6 < worst < 2e-4  # the docstring says: at most 1.1e-4


def test_batch_centring_couples_the_samples_and_per_sample_centring_does_not():
    g = np.random.default_rng(0)
    moves = []
    for _ in range(20):
        y = g.normal(size=(3, 32, 8, 8)) + 2 * g.normal(size=(3, 32, 1, 1))
        x = y + g.normal(size=y.shape)
        y2, x2 = y.copy(), x.copy()
        y2[1:] = g.normal(size=y[1:].shape) + 2 * g.normal(size=(2, 32, 1, 1))
        x2[1:] = y2[1:] + g.normal(size=y2[1:].shape)
        # cxlib: sample 0's loss ignores the other samples, to the last bit.
        assert _cxlib_loss(x, y)[0] == _cxlib_loss(x2, y2)[0]
        moves.append(abs(_authors_loss(x, y)[0] - _authors_loss(x2, y2)[0]))
    # The docstring says: 0.023 (median of 20 batches), up to 0.065.
    assert np.median(moves) == pytest.approx(0.0225, abs=0.001)
    assert max(moves) == pytest.approx(0.065, abs=0.001)


@pytest.mark.parametrize("implementation", ["full", "blocked"])
def test_batch_centring_option_is_the_authors_convention(implementation):
    g = np.random.default_rng(2)
    y = g.normal(size=(3, 12, 4, 5)) + 2 * g.normal(size=(3, 12, 1, 1))
    x = y + g.normal(size=y.shape)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    got = cxlib.contextual_loss(xt, yt, centring="batch", reduction="none",
                                implementation=implementation, block_size=7)
    want = _authors_loss(x, y, half_cosine=False, batch_centring=True)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    # Both conventions: the authors' code's numbers, exactly.
    code = cxlib.contextual_loss(xt, yt, centring="batch", eps=2e-5, reduction="none",
                                 implementation=implementation, block_size=7)
    np.testing.assert_allclose(code.numpy(), _authors_loss(x, y), rtol=1e-10)
    # The module and the VGG-free entry points agree; the default stays per sample.
    module = cxlib.ContextualLoss(centring="batch", reduction="none")
    np.testing.assert_allclose(module(xt, yt).numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(cxlib.contextual_loss(xt, yt, reduction="none").numpy(),
                               _authors_loss(x, y, half_cosine=False, batch_centring=False),
                               rtol=1e-12)
    # With one sample the two centrings are the same.
    one = cxlib.contextual_loss(xt[:1], yt[:1], centring="batch")
    assert one.item() == cxlib.contextual_loss(xt[:1], yt[:1]).item()


def test_batch_centring_for_cobi_and_vgg_and_bad_values():
    x, y = torch.randn(2, 6, 4, 4, dtype=torch.float64), torch.randn(2, 6, 4, 4, dtype=torch.float64)
    with_zero_sp = cxlib.contextual_bilateral_loss(x, y, weight_sp=0.0, eps=1e-5,
                                                   centring="batch", reduction="none")
    np.testing.assert_allclose(with_zero_sp.numpy(),
                               _authors_loss(x.numpy(), y.numpy(), half_cosine=False), rtol=1e-12)
    assert cxlib.VGGContextualLoss(weights=None, centring="batch").settings.centring == "batch"
    with pytest.raises(ValueError, match="centring must be one of 'sample', 'batch', got 'image'"):
        cxlib.contextual_loss(x, y, centring="image")
