"""L1, L2, perceptual, Gram, total variation and patch features against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cxlib


def test_l1_and_l2_by_hand():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    y = torch.tensor([[[[1.0, 0.0], [0.0, 4.0]]], [[[1.0, -1.0], [1.0, -1.0]]]])
    # |diff| = (0, 2, 3, 0) and (1, 1, 1, 1); squares (0, 4, 9, 0) and (1, 1, 1, 1)
    torch.testing.assert_close(cxlib.l1_loss(x, y, reduction="none"), torch.tensor([1.25, 1.0]))
    torch.testing.assert_close(cxlib.l2_loss(x, y, reduction="none"), torch.tensor([3.25, 1.0]))
    assert cxlib.l1_loss(x, y).item() == pytest.approx(1.125)
    assert cxlib.l2_loss(x, y, reduction="sum").item() == pytest.approx(4.25)


def test_perceptual_is_l1_on_features():
    a, b = torch.randn(2, 5, 3, 4), torch.randn(2, 5, 3, 4)
    want = np.abs(a.numpy() - b.numpy()).reshape(2, -1).mean(1)
    np.testing.assert_allclose(cxlib.perceptual_loss(a, b, reduction="none").numpy(), want, rtol=1e-6)


def test_gram_matrix_and_loss_by_hand():
    # One sample, 2 channels, 2 positions: F = [[1, 2], [3, 4]].
    f = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    # F F^T = [[5, 11], [11, 25]], divided by C * H * W = 4
    torch.testing.assert_close(cxlib.gram_matrix(f), torch.tensor([[[1.25, 2.75], [2.75, 6.25]]]))
    zero = torch.zeros_like(f)
    # Gatys: 1 / (4 N^2 M^2) * sum (F F^T)^2 with N = 2 channels, M = 2 positions
    want = (5**2 + 11**2 + 11**2 + 25**2) / (4 * 2**2 * 2**2)
    assert cxlib.gram_loss(f, zero).item() == pytest.approx(want)


def test_gram_loss_against_gatys_formula_with_different_sizes():
    x, y = torch.randn(3, 4, 5, 6, dtype=torch.float64), torch.randn(3, 4, 7, 3, dtype=torch.float64)
    want = []
    for a, b in zip(x.numpy(), y.numpy()):
        fa, fb = a.reshape(4, -1), b.reshape(4, -1)
        ga, gb = fa @ fa.T / fa.size, fb @ fb.T / fb.size
        want.append(((ga - gb) ** 2).sum() / 4)
    np.testing.assert_allclose(cxlib.gram_loss(x, y, reduction="none").numpy(), want, rtol=1e-12)
    assert cxlib.gram_loss(x, x).item() == 0.0


def test_gram_loss_is_blind_to_where_things_are():
    # A global statistic: shuffling positions changes nothing.
    x = torch.randn(1, 6, 4, 4)
    shuffled = x.flatten(2)[:, :, torch.randperm(16)].reshape(1, 6, 4, 4)
    assert cxlib.gram_loss(x, shuffled).item() == pytest.approx(0.0, abs=1e-10)


def test_total_variation_by_hand():
    image = torch.tensor([[[[0.0, 1.0, 3.0], [1.0, 1.0, 1.0]]]])
    # vertical |diffs| 1, 0, 2; horizontal 1, 2, 0, 0 -> 6 over 6 pixels
    assert cxlib.total_variation(image).item() == pytest.approx(1.0)
    # squares: vertical 1, 0, 4; horizontal 1, 4, 0, 0 -> 10 over 6 pixels
    assert cxlib.total_variation(image, p=2).item() == pytest.approx(10 / 6)
    assert cxlib.total_variation(torch.ones(2, 3, 4, 4), reduction="none").tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    "loss",
    [
        lambda a, b: cxlib.l1_loss(a, b, reduction="none"),
        lambda a, b: cxlib.l2_loss(a, b, reduction="none"),
        lambda a, b: cxlib.perceptual_loss(a, b, reduction="sum"),
        lambda a, b: cxlib.gram_loss(a, b, reduction="none"),
        lambda a, b: cxlib.total_variation(a, p=1) + cxlib.total_variation(b, p=2),
    ],
    ids=["l1", "l2", "perceptual", "gram", "tv"],
)
def test_gradcheck_float64(loss):
    a = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(loss, (a, b))


def test_modules_equal_functions():
    a, b = torch.randn(2, 3, 5, 5), torch.randn(2, 3, 5, 5)
    assert cxlib.L1Loss(reduction="sum")(a, b).item() == cxlib.l1_loss(a, b, reduction="sum").item()
    assert cxlib.L2Loss()(a, b).item() == cxlib.l2_loss(a, b).item()
    assert cxlib.TotalVariation(p=2)(a).item() == cxlib.total_variation(a, p=2).item()
    with pytest.raises(TypeError):
        cxlib.L1Loss("sum")  # type: ignore[misc]


def test_bad_input():
    with pytest.raises(ValueError, match=r"same shape \(this loss compares aligned positions\), got x \(1, 3, 4, 4\) and y \(1, 3, 4, 5\)"):
        cxlib.l1_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))
    with pytest.raises(ValueError, match="same batch size and channels"):
        cxlib.gram_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, 4))
    with pytest.raises(ValueError, match="p must be 1 or 2, got 3"):
        cxlib.total_variation(torch.zeros(1, 3, 4, 4), p=3)
    with pytest.raises(ValueError, match="reduction must be one of"):
        cxlib.L2Loss(reduction="avg")
    with pytest.raises(TypeError, match="floating-point dtype"):
        cxlib.l2_loss(torch.zeros(1, 3, 4, 4, dtype=torch.int32), torch.zeros(1, 3, 4, 4, dtype=torch.int32))


def test_patch_features_hold_the_pixels_of_each_patch():
    images = torch.arange(2 * 3 * 6 * 7, dtype=torch.float32).reshape(2, 3, 6, 7)
    feats = cxlib.patch_features(images, size=3, stride=2)
    assert feats.shape == (2, 27, 2, 3)
    # Patch at output (1, 2) starts at pixel (2, 4); channel c*9 + r*3 + q is images[c, 2+r, 4+q].
    for c in range(3):
        for r in range(3):
            for q in range(3):
                assert feats[1, c * 9 + r * 3 + q, 1, 2] == images[1, c, 2 + r, 4 + q]
    torch.testing.assert_close(cxlib.PatchFeatures(size=3, stride=2)(images), feats)
    with pytest.raises(ValueError, match="at least 5x5"):
        cxlib.patch_features(torch.zeros(1, 3, 4, 9))
    with pytest.raises(TypeError, match="size must be an int >= 1"):
        cxlib.PatchFeatures(size=2.5)
