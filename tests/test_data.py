"""Datasets: image folders, video frames, CelebA from a local folder (and its failures), and the
synthetic data of the training chapters."""

from __future__ import annotations

import zipfile

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import cxlib
from cxlib.training.data import square_resize


def _write_png(path, array):
    iio.imwrite(path, array)


def _halve(a, axis):
    """Downscale by 2 along ``axis`` with the triangle filter of a bilinear antialiased resize."""
    a = np.moveaxis(a, axis, 0)
    taps = np.array([1.0, 3.0, 3.0, 1.0]) / 8
    out = []
    for i in range(a.shape[0] // 2):
        rows = [2 * i - 1 + k for k in range(4)]
        ok = [k for k, r in enumerate(rows) if 0 <= r < a.shape[0]]
        weights = taps[ok] / taps[ok].sum()
        out.append(sum(w * a[rows[k]] for w, k in zip(weights, ok)))
    return np.moveaxis(np.stack(out), 0, axis)


def test_image_folder_reads_sorted_files_as_square_tensors(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (20, 30, 3), dtype=np.uint8) for _ in range(3)]
    for k, a in enumerate(arrays):
        _write_png(tmp_path / f"img_{k}.png", a)
    (tmp_path / "notes.txt").write_text("not an image")
    folder = cxlib.training.ImageFolder(tmp_path, 10)
    assert len(folder) == 3
    # The centred 20 x 20 square (columns 5 to 24) halved with an antialiasing triangle filter:
    # taps [1, 3, 3, 1] / 8 around each output pixel, renormalised where they leave the image.
    square = arrays[1][:, 5:25].astype(np.float64) / 255
    want = _halve(_halve(square, axis=0), axis=1).transpose(2, 0, 1)
    np.testing.assert_allclose(folder[1].numpy(), want, atol=1e-6)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no images"):
        cxlib.training.ImageFolder(empty, 8)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        cxlib.training.ImageFolder(tmp_path / "absent", 8)


def test_square_resize_takes_the_centred_square():
    image = torch.zeros(3, 4, 8)
    image[:, :, 2:6] = 1.0  # the centred 4x4 square is white, the sides black
    torch.testing.assert_close(square_resize(image, 4), torch.ones(3, 4, 4))


def test_video_round_trip_through_a_gif(tmp_path):
    photo = cxlib.book.images.load_image("astronaut", 32)
    frames = cxlib.book.synthetic_video(photo, 6)
    assert frames.shape == (6, 3, 32, 32)
    assert (frames[0] - frames[3]).abs().mean() > 0.02  # it moves
    path = cxlib.training.write_video(frames, tmp_path / "clip.gif")
    video = cxlib.training.VideoFrames(path, 32)
    assert len(video) == 6
    # GIF stores 256 colours per frame: close, not equal.
    assert (video.images - frames).abs().mean() < 0.03
    assert len(cxlib.training.VideoFrames(path, 16, every=2, max_frames=2)) == 2
    with pytest.raises(FileNotFoundError, match="no such video file"):
        cxlib.training.VideoFrames(tmp_path / "missing.mp4", 16)
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(OSError, match="could not read the video"):
        cxlib.training.VideoFrames(tmp_path / "broken.mp4", 16)


def test_edge_map_marks_edges_only():
    image = torch.zeros(1, 3, 8, 8)
    image[..., 4:] = 1.0
    edges = cxlib.training.edge_map(image)
    assert edges.shape == (1, 1, 8, 8) and edges.max() == 1.0
    assert torch.all(edges[..., :2] == 0) and torch.all(edges[..., 6:] == 0)
    assert torch.all(edges[..., 3:5] > 0.5)


def test_synthetic_faces_differ_in_the_lips_only():
    plain, mouths = cxlib.book.synthetic_faces(6, 48, coloured_lips=False, seed=2)
    lips, mouths_b = cxlib.book.synthetic_faces(6, 48, coloured_lips=True, seed=2)
    assert plain.shape == (6, 3, 48, 48) and torch.equal(mouths, mouths_b)

    def redness(images):
        out = []
        for image, (top, left, bottom, right) in zip(images, mouths.round().long()):
            box = image[:, top:bottom, left:right]
            out.append((box[0] - box[1:].mean(0)).mean())
        return torch.stack(out)

    assert torch.all(redness(lips) > redness(plain) + 0.15)
    outside = torch.ones(48, 48, dtype=torch.bool)
    for top, left, bottom, right in mouths.round().long().tolist():
        outside[max(0, top - 2):bottom + 2, max(0, left - 2):right + 2] = False
    # Same seed, same faces: they differ only around the mouth.
    assert (plain - lips).abs()[:, :, outside].max() < 1e-6
    assert mouths[:, 1].std() > 1.0  # the faces are not all at the same place


def _fake_celeba(root, names_and_male, partition):
    root.mkdir()
    (root / "img_align_celeba").mkdir()
    rng = np.random.default_rng(0)
    lines = [str(len(names_and_male)), "5_o_Clock_Shadow Male Smiling"]
    for name, male in names_and_male:
        _write_png(root / "img_align_celeba" / name, rng.integers(0, 256, (218, 178, 3), dtype=np.uint8))
        lines.append(f"{name} -1 {'1' if male else '-1'} 1")
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(f"{n} {p}" for n, p in partition) + "\n")


def test_celeba_split_by_attribute(tmp_path):
    names = [("000001.jpg", True), ("000002.jpg", False), ("000003.jpg", True), ("000004.jpg", False)]
    _fake_celeba(tmp_path / "celeba", names, [("000001.jpg", 0), ("000002.jpg", 0), ("000003.jpg", 2), ("000004.jpg", 0)])
    men = cxlib.training.CelebAAttribute(tmp_path / "celeba", attribute="Male", present=True, split="train", size=16)
    women = cxlib.training.CelebAAttribute(tmp_path / "celeba", attribute="Male", present=False, split="train", size=16)
    assert men.files == ["000001.jpg"] and women.files == ["000002.jpg", "000004.jpg"]
    assert men[0].shape == (3, 16, 16)
    assert cxlib.training.CelebAAttribute(tmp_path / "celeba", present=True, split="all", size=8).files == ["000001.jpg", "000003.jpg"]
    with pytest.raises(ValueError, match="unknown CelebA attribute 'Beard'; valid: 5_o_Clock_Shadow, Male, Smiling"):
        cxlib.training.CelebAAttribute(tmp_path / "celeba", attribute="Beard")


def test_celeba_missing_or_corrupted_gives_instructions_not_a_traceback(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        cxlib.training.CelebAAttribute(tmp_path / "nothing")
    message = str(info.value)
    assert "missing list_attr_celeba.txt, list_eval_partition.txt, img_align_celeba/" in message
    assert "Google Drive" in message and "Kaggle" in message
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "list_attr_celeba.txt").write_text("0\nMale\n")
    (broken / "list_eval_partition.txt").write_text("")
    (broken / "img_align_celeba.zip").write_bytes(b"<html>Google Drive - Quota exceeded</html>")
    with pytest.raises(ValueError, match="is not a valid zip file"):
        cxlib.training.CelebAAttribute(broken)


def test_celeba_zip_is_extracted_on_first_use(tmp_path):
    source = tmp_path / "src"
    _fake_celeba(source, [("000001.jpg", True), ("000002.jpg", True)], [("000001.jpg", 0), ("000002.jpg", 0)])
    target = tmp_path / "celeba"
    target.mkdir()
    for name in ("list_attr_celeba.txt", "list_eval_partition.txt"):
        (target / name).write_bytes((source / name).read_bytes())
    with zipfile.ZipFile(target / "img_align_celeba.zip", "w") as zf:
        for image in (source / "img_align_celeba").iterdir():
            zf.write(image, f"img_align_celeba/{image.name}")
    data = cxlib.training.CelebAAttribute(target, size=8)
    assert len(data) == 2 and (target / "img_align_celeba" / "000002.jpg").is_file()


def _celeba_with_zip(tmp_path, names=("000001.jpg", "000002.jpg", "000003.jpg")):
    source = tmp_path / "src"
    _fake_celeba(source, [(n, True) for n in names], [(n, 0) for n in names])
    target = tmp_path / "celeba"
    target.mkdir()
    for name in ("list_attr_celeba.txt", "list_eval_partition.txt"):
        (target / name).write_bytes((source / name).read_bytes())
    with zipfile.ZipFile(target / "img_align_celeba.zip", "w") as zf:
        for image in sorted((source / "img_align_celeba").iterdir()):
            zf.write(image, f"img_align_celeba/{image.name}")
    return target


def test_celeba_interrupted_extraction_leaves_nothing_a_later_run_takes_as_complete(
        tmp_path, monkeypatch):
    target = _celeba_with_zip(tmp_path)
    real_extract = zipfile.ZipFile._extract_member  # what extractall calls for each file

    def extract_one_then_interrupt(self, *args, **kwargs):
        real_extract(self, *args, **kwargs)
        raise KeyboardInterrupt  # Ctrl-C (or a killed kernel) after the first file

    monkeypatch.setattr(zipfile.ZipFile, "_extract_member", extract_one_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        cxlib.training.CelebAAttribute(target, size=8)
    assert not (target / "img_align_celeba").exists()
    assert [p.name for p in target.iterdir() if p.is_dir()] == []  # the staging folder is gone
    monkeypatch.setattr(zipfile.ZipFile, "_extract_member", real_extract)
    data = cxlib.training.CelebAAttribute(target, size=8)
    assert len(data) == 3
    assert sorted(p.name for p in (target / "img_align_celeba").iterdir()) == [
        "000001.jpg", "000002.jpg", "000003.jpg"]


def test_celeba_a_killed_extraction_staging_folder_is_not_taken_for_the_images(tmp_path):
    target = _celeba_with_zip(tmp_path)
    # What a SIGKILL during extraction leaves: a staging folder with some of the images.
    stale = target / ".img_align_celeba-extracting-dead" / "img_align_celeba"
    stale.mkdir(parents=True)
    (stale / "000001.jpg").write_bytes(b"partial")
    data = cxlib.training.CelebAAttribute(target, size=8)
    assert len(data) == 3 and data[2].shape == (3, 8, 8)


def _written(tmp_path, name, array, **kwargs):
    path = tmp_path / name
    iio.imwrite(path, array, **kwargs)
    return path


def test_every_reader_takes_8_and_16_bit_float_grey_rgba_and_palette_images(tmp_path):
    from PIL import Image

    g = np.random.default_rng(0)
    rgb8 = (g.random((8, 8, 3)) * 255).astype(np.uint8)
    grey16 = (g.random((8, 8)) * 65535).astype(np.uint16)
    grey_float = g.random((8, 8)).astype(np.float32)
    palette = Image.fromarray(rgb8).convert("P", palette=Image.ADAPTIVE, colors=8)
    palette.save(tmp_path / "palette.png")
    palette_rgb = np.asarray(palette.convert("RGB"))
    cases = {
        "rgb8.png": (_written(tmp_path, "rgb8.png", rgb8), rgb8 / 255.0),
        "grey8.png": (_written(tmp_path, "grey8.png", rgb8[..., 0]), rgb8[..., :1] / 255.0),
        "grey16.png": (_written(tmp_path, "grey16.png", grey16), grey16[..., None] / 65535.0),
        "float.tiff": (_written(tmp_path, "float.tiff", grey_float), grey_float[..., None]),
        "rgba.png": (_written(tmp_path, "rgba.png", np.dstack([rgb8, rgb8[..., :1]])), rgb8 / 255.0),
        "grey_alpha.png": (_written(tmp_path, "grey_alpha.png", np.dstack([rgb8[..., 0], rgb8[..., 1]])),
                           rgb8[..., :1] / 255.0),
        "palette.png": (tmp_path / "palette.png", palette_rgb / 255.0),
    }
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")  # really 16 bits
    assert Image.open(tmp_path / "palette.png").mode == "P"
    for name, (path, want) in cases.items():
        want = np.broadcast_to(want, (8, 8, 3)).transpose(2, 0, 1)
        got = cxlib.training.data.read_image_file(path, 8)
        assert got.dtype == torch.float32 and 0 <= got.min() and got.max() <= 1, name
        np.testing.assert_allclose(got.numpy(), want, atol=1e-6, err_msg=name)
    folder = cxlib.training.ImageFolder(tmp_path, 8)
    assert [p.name for p in folder.files] == sorted(cases)
    for k, path in enumerate(folder.files):
        want = np.broadcast_to(cases[path.name][1], (8, 8, 3)).transpose(2, 0, 1)
        np.testing.assert_allclose(folder[k].numpy(), want, atol=1e-6, err_msg=path.name)
    # The first frame of an animation, and a video's frames in 16 bits.
    frames = np.stack([rgb8, 255 - rgb8])
    gif = _written(tmp_path / "..", "anim.gif", frames, duration=100, loop=0)
    first = cxlib.training.data.read_image_file(gif, 8)
    assert first.shape == (3, 8, 8) and (first - torch.from_numpy(rgb8 / 255.0).permute(2, 0, 1).float()).abs().mean() < 0.05
    from cxlib.training.data import image_from_array

    np.testing.assert_allclose(image_from_array(grey16.astype(np.int32)).numpy()[0], grey16 / 65535.0,
                               atol=1e-6)
    assert image_from_array(np.ones((2, 2), bool)).eq(1).all()
    with pytest.raises(ValueError, match=r"expected an image array .* got shape \(2, 2, 5\)"):
        image_from_array(np.zeros((2, 2, 5), np.uint8))


def test_edge_map_and_edge_correlation_take_float64_images():
    image = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    image[..., 4:] = 1.0
    edges = cxlib.training.edge_map(image)
    assert edges.dtype == torch.float64
    torch.testing.assert_close(edges, cxlib.training.edge_map(image.float()).double())
    corr = cxlib.book.metrics.edge_correlation(image, image)
    assert corr.dtype == torch.float64 and corr.item() == pytest.approx(1.0)


def test_a_cmyk_jpeg_is_read_in_its_colours(tmp_path):
    from PIL import Image

    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:, :4] = (255, 0, 0)  # red | blue
    rgb[:, 4:] = (0, 0, 255)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "print.jpg", quality=100)
    assert Image.open(tmp_path / "print.jpg").mode == "CMYK"
    got = cxlib.training.data.read_image_file(tmp_path / "print.jpg", 8)
    np.testing.assert_allclose(got[:, 0, 1].numpy(), [1, 0, 0], atol=0.1)  # red, not cyan
    np.testing.assert_allclose(got[:, 0, 6].numpy(), [0, 0, 1], atol=0.1)


def test_celeba_under_torchrun_only_local_rank_0_extracts_and_the_others_wait(tmp_path, monkeypatch):
    import threading

    import cxlib.training.data as data

    target = _celeba_with_zip(tmp_path)
    monkeypatch.setattr(data, "_EXTRACTION_POLL_SECONDS", 0.05)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    extracted = []
    monkeypatch.setattr(zipfile.ZipFile, "extractall", lambda *a, **k: extracted.append(1))

    def rank_0_finishes():
        (target / "img_align_celeba").mkdir()
        for name in ("000001.jpg", "000002.jpg", "000003.jpg"):
            (target / "img_align_celeba" / name).write_bytes((tmp_path / "src" / "img_align_celeba" / name).read_bytes())

    timer = threading.Timer(0.3, rank_0_finishes)
    timer.start()
    data_set = cxlib.training.CelebAAttribute(target, size=8)
    timer.join()
    assert extracted == [] and len(data_set) == 3  # rank 1 waited, extracted nothing


def test_celeba_extraction_tolerates_losing_the_rename_race_and_clears_old_staging(tmp_path, monkeypatch):
    import os
    import pathlib
    import time

    target = _celeba_with_zip(tmp_path)
    old = target / ".img_align_celeba-extracting-old"
    young = target / ".img_align_celeba-extracting-young"
    for folder in (old, young):
        folder.mkdir()
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    real_rename = pathlib.Path.rename

    def another_process_won(self, destination):
        real_rename(self, destination)  # the folder is complete: as another rank's would be
        raise OSError(39, "Directory not empty")

    monkeypatch.setattr(pathlib.Path, "rename", another_process_won)
    data_set = cxlib.training.CelebAAttribute(target, size=8)
    assert len(data_set) == 3 and data_set[0].shape == (3, 8, 8)
    assert not old.exists() and young.exists()  # only a stale staging folder is removed
    assert [p.name for p in target.iterdir() if p.name.startswith(".img_align_celeba-extracting-")] == [young.name]
