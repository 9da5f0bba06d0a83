"""Photographs, misalignments, image metrics, the book's setting switch and its figure helpers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import cxlib
from cxlib.book import images, metrics
from cxlib.book.plot import correspondence_field, position_colors
from cxlib.book.setting import book_setting, resolve_setting


def test_load_image_is_rgb_in_unit_range():
    photo = images.load_image("astronaut", 32)
    assert photo.shape == (1, 3, 32, 32) and photo.dtype == torch.float32
    assert 0.0 <= photo.min() and photo.max() <= 1.0 and photo.std() > 0.05
    grey = images.load_image("camera", (20, 30), crop=(0, 0, 100, 150))
    assert grey.shape == (1, 3, 20, 30)
    torch.testing.assert_close(grey[:, 0], grey[:, 1])
    import skimage.data

    full = images.load_image("chelsea")
    np.testing.assert_allclose(full[0].permute(1, 2, 0).numpy(), skimage.data.chelsea() / 255.0, atol=1e-6)
    with pytest.raises(ValueError, match="unknown photograph 'lena'"):
        images.load_image("lena")


def test_integer_shift_moves_content_by_whole_pixels():
    x = torch.rand(1, 3, 12, 12)
    moved = images.misalign(x, shift=(2, -3))
    # Output pixel (r, c) shows input pixel (r - 2, c + 3) wherever that exists.
    torch.testing.assert_close(moved[:, :, 2:, :9], x[:, :, :10, 3:], rtol=1e-5, atol=1e-5)
    # Outside, the border repeats.
    torch.testing.assert_close(moved[:, :, 0, :9], x[:, :, 0, 3:], rtol=1e-5, atol=1e-5)


def test_identity_and_grid_agree_with_misalign():
    x = torch.rand(2, 3, 9, 11)
    torch.testing.assert_close(images.misalign(x), x, rtol=1e-5, atol=1e-5)
    # Misaligning an image of its own coordinates reproduces misalignment_grid where the source
    # lies inside the image (bilinear interpolation of a linear function is exact).
    rows, cols = torch.meshgrid(torch.arange(9.0), torch.arange(11.0), indexing="ij")
    coords = torch.stack([rows, cols]).unsqueeze(0)
    kwargs = dict(shift=(1.3, -0.7), rotation=12.0, scale=1.1, warp=0.8)
    moved = images.misalign(coords, **kwargs, generator=torch.Generator().manual_seed(4))
    grid = images.misalignment_grid(9, 11, **kwargs, generator=torch.Generator().manual_seed(4))
    inside = (grid[..., 0] >= 0) & (grid[..., 0] <= 8) & (grid[..., 1] >= 0) & (grid[..., 1] <= 10)
    assert inside.float().mean() > 0.5
    torch.testing.assert_close(moved[0].permute(1, 2, 0)[inside], grid[inside], rtol=1e-4, atol=1e-4)


def test_rotation_about_the_centre_keeps_the_centre():
    grid = images.misalignment_grid(11, 11, rotation=37.0)
    torch.testing.assert_close(grid[5, 5], torch.tensor([5.0, 5.0]))
    # A rotation keeps distances to the centre.
    d_out = torch.tensor([3.0, -2.0]).norm()
    torch.testing.assert_close((grid[5 + 3, 5 - 2] - 5.0).norm(), d_out)


def test_psnr_and_ssim_closed_forms():
    a = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    b = (a + 0.1 * torch.randn(a.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    mse = (a.double() - b.double()).square().flatten(1).mean(1)
    torch.testing.assert_close(metrics.psnr(b, a), 10 * torch.log10(1 / mse))
    assert metrics.psnr(a, a).tolist() == [math.inf, math.inf]
    # One reference for the batch.
    torch.testing.assert_close(metrics.psnr(b, a[:1]), metrics.psnr(b, a[:1].expand(2, -1, -1, -1)))
    # SSIM of constant images c1 and c2 (zero variances): (2 c1 c2 + C1) / (c1^2 + c2^2 + C1).
    c1, c2, k1 = 0.3, 0.7, 0.01**2
    flat = metrics.ssim(torch.full((1, 3, 9, 9), c1, dtype=torch.float64),
                       torch.full((1, 3, 9, 9), c2, dtype=torch.float64))
    assert flat.item() == pytest.approx((2 * c1 * c2 + k1) / (c1**2 + c2**2 + k1), rel=1e-9)
    assert metrics.ssim(a, a).tolist() == pytest.approx([1.0, 1.0])
    # A constant image against a textured one of the same mean: the luminance factor is 1 and
    # the structure factor is C2 / (var + C2) (sample variance, over the 7 x 7 windows).
    textured = torch.zeros(1, 1, 7, 7, dtype=torch.float64)
    textured[..., ::2, :] = 1.0  # rows alternate 1, 0: mean 4/7
    mean = textured.mean().item()
    var = textured.var(unbiased=True).item()
    k2 = 0.03**2
    got = metrics.ssim(torch.full((1, 1, 7, 7), mean, dtype=torch.float64), textured).item()
    assert got == pytest.approx(k2 / (var + k2), rel=1e-9)
    assert metrics.ssim(b, a).tolist() == pytest.approx(metrics.ssim(a, b).tolist())  # symmetric
    assert all(0 < v < 1 for v in metrics.ssim(b, a).tolist())
    with pytest.raises(ValueError, match=r"images and reference must have the same \(C, H, W\)"):
        metrics.psnr(a, a[:, :, :10])


def test_add_noise_has_the_requested_spread():
    x = torch.full((1, 3, 64, 64), 0.5)
    noisy = images.add_noise(x, 0.1, generator=torch.Generator().manual_seed(0))
    assert (noisy - x).std().item() == pytest.approx(0.1, rel=0.05)
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        images.add_noise(x, -1.0)


def test_position_colours_are_distinct_and_the_identity_field_reproduces_them():
    colours = position_colors(6, 7)
    assert colours.shape == (6, 7, 3) and colours.min() >= 0 and colours.max() <= 1
    assert len({tuple(np.round(c, 6)) for c in colours.reshape(-1, 3)}) == 42
    field = correspondence_field(torch.arange(42), (6, 7), (6, 7))
    np.testing.assert_array_equal(field, colours)
    flipped = correspondence_field(torch.arange(42).flip(0), (6, 7), (6, 7))
    np.testing.assert_array_equal(flipped, colours[::-1, ::-1])


def test_book_setting_reads_the_switch_and_seeds(monkeypatch):
    monkeypatch.delenv("CXLIB_SETTING", raising=False)
    monkeypatch.setenv("CXLIB_FAST", "1")
    fast = book_setting(seed=3, device="cpu")
    first = torch.rand(1).item()
    assert fast.fast and fast.choose(fast=1, full=2) == 1 and "fast setting (CXLIB_FAST=1)" in fast.describe()
    monkeypatch.setenv("CXLIB_FAST", "0")
    full = book_setting(seed=3, device="cpu")
    assert not full.fast and full.choose(fast=1, full=2) == 2 and torch.rand(1).item() == first
    assert full.name == "full" and math.isfinite(full.seed)


def test_the_setting_follows_the_hardware_unless_told(monkeypatch):
    monkeypatch.delenv("CXLIB_SETTING", raising=False)
    monkeypatch.delenv("CXLIB_FAST", raising=False)
    assert resolve_setting(cuda_available=True) == ("full", "a CUDA GPU is present")
    assert resolve_setting(cuda_available=False)[0] == "fast"
    assert book_setting(device="cpu").name == "fast"  # the device the chapter computes on decides
    monkeypatch.setenv("CXLIB_FAST", "1")
    assert resolve_setting(cuda_available=True) == ("fast", "CXLIB_FAST=1")
    monkeypatch.setenv("CXLIB_SETTING", "full")  # the explicit switch wins over the old one
    assert resolve_setting(cuda_available=False) == ("full", "CXLIB_SETTING=full")
    assert book_setting(device="cpu").describe().startswith("full setting (the paper's sizes) (CXLIB_SETTING=full) on cpu")
    monkeypatch.setenv("CXLIB_SETTING", "Fast ")
    assert resolve_setting(cuda_available=True)[0] == "fast"
    monkeypatch.setenv("CXLIB_SETTING", "paper")
    with pytest.raises(ValueError, match=r"CXLIB_SETTING must be one of \('fast', 'full', 'smoke'\) \(or unset\), got 'paper'"):
        book_setting(device="cpu")


def test_the_smoke_setting_keeps_the_full_sizes_and_cuts_the_loops(monkeypatch):
    monkeypatch.setenv("CXLIB_SETTING", "smoke")
    smoke = book_setting(device="cpu")
    assert smoke.name == "smoke" and smoke.smoke and not smoke.fast
    assert smoke.choose(fast=64, full=256) == 256  # sizes: the full setting's
    assert smoke.choose(fast=100, full=6000, smoke=3) == 3  # a loop: its few steps
    assert smoke.choose(fast=[1], full=[1, 2, 3], smoke=[]) == []  # an explicit empty value counts
    assert "smoke setting (the paper's sizes" in smoke.describe()
    assert ("setting", "smoke") in smoke.provenance().items
    monkeypatch.setenv("CXLIB_SETTING", "full")
    full = book_setting(device="cpu")
    assert not full.smoke and full.choose(fast=100, full=6000, smoke=3) == 6000
    monkeypatch.setenv("CXLIB_SETTING", "fast")
    assert book_setting(device="cpu").choose(fast=100, full=6000, smoke=3) == 100


def test_seed_override_runs_dir_and_provenance(monkeypatch, tmp_path):
    import datetime

    monkeypatch.setenv("CXLIB_SETTING", "fast")
    monkeypatch.setenv("CXLIB_SEED", "7")
    s = book_setting(seed=0, device="cpu")
    drawn = torch.rand(1).item()
    torch.manual_seed(7)
    assert s.seed == 7 and drawn == torch.rand(1).item()
    monkeypatch.setenv("CXLIB_SEED", "seven")
    with pytest.raises(ValueError, match="CXLIB_SEED must be an integer, got 'seven'"):
        book_setting(device="cpu")
    monkeypatch.delenv("CXLIB_SEED")
    assert book_setting(device="cpu").runs_dir("puppet") == Path("runs") / "puppet"
    monkeypatch.setenv("CXLIB_RUNS_DIR", str(tmp_path / "drive"))
    assert book_setting(device="cpu").runs_dir("puppet", "64px") == tmp_path / "drive" / "puppet" / "64px"

    line = book_setting(device="cpu").provenance(today=datetime.date(2026, 11, 27))
    text = str(line)
    assert text.startswith("Made with: setting fast · device cpu · VGG19 weights not used in this chapter")
    assert f"cxlib {cxlib.__version__}" in text and f"torch {torch.__version__}" in text
    assert text.endswith("date 2026-11-27")
    html = line._repr_html_()
    assert 'class="cx-provenance"' in html and "<b>fast</b>" in html
    monkeypatch.setenv("CXLIB_VGG_WEIGHTS", "random")
    with_vgg = book_setting(device="cpu", uses_vgg=True)
    assert "VGG19 weights RANDOM (seed 0; CXLIB_VGG_WEIGHTS=random)" in str(with_vgg.provenance())
    # runs trained with other weights are never reloaded
    assert with_vgg.runs_dir("puppet") == tmp_path / "drive" / "random" / "puppet"


def test_edge_correlation_sees_layout_not_colour():
    photo = images.load_image("astronaut", 32)
    recoloured = photo[:, [2, 0, 1]] * 0.5 + 0.3
    moved = images.misalign(photo, shift=(6, 6))
    assert metrics.edge_correlation(photo, photo).item() == pytest.approx(1.0)
    assert metrics.edge_correlation(recoloured, photo).item() > 0.8
    assert metrics.edge_correlation(moved, photo).item() < 0.4


def test_colour_distance_closed_form_and_invariance():
    photo = images.load_image("chelsea", 24)
    shuffled = photo.flatten(2)[:, :, torch.randperm(24 * 24)].reshape(photo.shape)
    assert metrics.colour_distance(shuffled, photo).item() == pytest.approx(0.0, abs=1e-6)
    # Shifting every pixel by delta moves each projection by <delta, direction>.
    delta = torch.tensor([0.1, -0.05, 0.02])
    directions = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    directions = directions / directions.norm(dim=1, keepdim=True)
    want = (directions @ delta).abs().mean().item()
    got = metrics.colour_distance(photo + delta.view(1, 3, 1, 1), photo).item()
    assert got == pytest.approx(want, rel=1e-4)
    small = images.load_image("chelsea", 12)
    assert metrics.colour_distance(small, photo).item() < 0.02  # same palette, other size


def test_show_animation_embeds_the_gif_it_wrote(tmp_path):
    import base64
    import re

    import imageio.v3 as iio

    from cxlib.book import show_animation

    frames = torch.zeros(3, 3, 8, 8)
    for k in range(3):
        frames[k, k % 3] = 1.0  # red, green, blue frames
    html = show_animation(frames, tmp_path / "sub" / "clip.gif", fps=5, alt='a "quoted" alt')
    encoded = re.search(r'base64,([^"]+)"', html.data).group(1)
    assert base64.b64decode(encoded) == (tmp_path / "sub" / "clip.gif").read_bytes()
    back = iio.imread(tmp_path / "sub" / "clip.gif", index=None)
    assert back.shape[0] == 3
    assert [int(np.argmax(f[0, 0, :3])) for f in back] == [0, 1, 2]  # the frames, in order
    assert 'alt="a &quot;quoted&quot; alt"' in html.data


def test_show_images_rows_are_as_tall_as_their_images():
    # A training sample grid is a strip four times wider than tall: its rows must not keep the
    # square image's height (the blank bands chapter 8's grids had).
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cxlib.book import show_images

    strip = np.zeros((64, 256, 3))
    wide = show_images([strip] * 4, ["a", "b", "c", "d"], ncols=2, size=4.0)
    square = show_images([torch.rand(3, 8, 8)] * 4, ["a", "b", "c", "d"], ncols=2, size=4.0)
    assert wide.get_size_inches()[0] == square.get_size_inches()[0] == 8.0
    assert wide.get_size_inches()[1] == pytest.approx(2 * 4.0 * 0.25 + 2 * 0.3)
    assert square.get_size_inches()[1] == pytest.approx(2 * 4.0 + 2 * 0.3)
    plt.close("all")
