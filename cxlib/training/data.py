"""Data for the trained applications: image folders, video frames, CelebA by attribute, and the
synthetic data the book trains on offline (a moving photograph, drawn faces with and without
coloured lips, edge drawings).

Every dataset returns float images (3, S, S) in [0, 1], cropped to a centred square and resized.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Sequence, Sized
from typing import Any, cast
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from .._optional import require
from .._checks import check_positive_int, check_tensor

__all__ = [
    "IMAGE_EXTENSIONS",
    "CelebAAttribute",
    "ImageFolder",
    "StackedImages",
    "StepBatches",
    "VideoFrames",
    "edge_map",
    "image_from_array",
    "read_image_file",
    "square_resize",
    "write_video",
]


def _imageio():
    return require("imageio.v3", extra="train", purpose="reading and writing image files and videos")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def square_resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """Crop the centred square of a (C, H, W) image and resize it to ``size`` x ``size``."""
    _, height, width = image.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[:, top : top + side, left : left + side]
    return TF.resize(square, [size, size], antialias=True).clamp(0.0, 1.0)


def image_from_array(array: Any) -> torch.Tensor:
    """An image array as read from a file, as a (3, H, W) float32 tensor in [0, 1].

    Takes what image readers (imageio, Pillow, scikit-image) return: (H, W) grey, (H, W, C) with
    C = 1 (grey), 2 (grey and alpha), 3 (RGB) or 4 (RGBA), or (1, H, W, C) (the first frame of
    a GIF). Integer pixels are scaled by their type's range: 8-bit by 255, 16-bit by 65535
    (also when a reader returns 16-bit pixels as int32, as Pillow's mode "I" does), booleans are
    0 or 1, and floating-point pixels are taken as they are. Grey is repeated over RGB and alpha
    is dropped (as Pillow's ``convert("RGB")``). Palette images are read as RGB by the readers.

    Raises:
        ValueError: an array of another shape.

    Example:
        >>> import numpy as np
        >>> from cxlib.training.data import image_from_array
        >>> image_from_array(np.full((2, 2), 65535, np.uint16)).unique().tolist()
        [1.0]
    """
    array = np.asarray(array)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(
            "expected an image array (H, W), (H, W, C) with C in 1-4, or (1, H, W, C); "
            f"got shape {array.shape}"
        )
    channels = array.shape[-1]
    array = array[..., :1] if channels in (1, 2) else array[..., :3]
    if array.dtype == np.bool_:
        scaled = array.astype(np.float32)
    elif np.issubdtype(array.dtype, np.integer):
        top = np.iinfo(array.dtype).max
        if array.dtype.itemsize > 2 and array.max(initial=0) <= 65535:
            top = 65535  # 16-bit pixels in a wider type
        scaled = array.astype(np.float32) / np.float32(top)
    elif np.issubdtype(array.dtype, np.floating):
        scaled = array
    else:
        raise ValueError(f"expected integer, boolean or floating-point pixels, got {array.dtype}")
    image = torch.from_numpy(np.ascontiguousarray(scaled, dtype=np.float32)).permute(2, 0, 1)
    return image.expand(3, -1, -1).clamp(0.0, 1.0).contiguous()


def read_image_file(path: str | Path, size: int) -> torch.Tensor:
    """One image file, its centred square resized, as a float tensor in [0, 1].

    Reads 8- and 16-bit, float, grey, RGB(A) and palette images (see :func:`image_from_array`),
    and the first frame of an animation.

    Args:
        path: the file.
        size: the side of the square returned.

    Shape:
        - Output: (3, size, size).

    Returns:
        The image.

    Example:
        >>> import tempfile, pathlib, numpy as np, imageio.v3 as iio
        >>> from cxlib.training import read_image_file
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "grey16.png"
        >>> iio.imwrite(path, np.full((6, 9), 65535, np.uint16))
        >>> read_image_file(path, 4).unique().tolist()
        [1.0]
    """
    iio = _imageio()
    array = iio.imread(path, index=0)
    if array.ndim == 3 and array.shape[-1] == 4 and _is_cmyk(path):
        # imageio hands CMYK (print-ready JPEGs, TIFFs) over as four channels, which would be
        # taken for RGBA: let Pillow convert it to RGB. Only four-channel files pay for the
        # second look at the file.
        array = iio.imread(path, index=0, mode="RGB")
    return square_resize(image_from_array(array), size)


def _is_cmyk(path: str | Path) -> bool:
    try:
        from PIL import Image

        with Image.open(path) as image:
            return image.mode == "CMYK"
    except Exception:  # noqa: BLE001 - not a format Pillow reads: imageio decides
        return False


class StepBatches:
    """The batch of step s: ``batch_size`` distinct items of a dataset drawn with a generator
    seeded by (seed, s), stacked. The same step always gives the same batch, which is what makes
    resumption exact.

    Args:
        dataset: any map-style dataset of tensors.
        batch_size: items per batch.
        seed: seed of the draws.

    Example:
        >>> import torch
        >>> from cxlib.training import StackedImages, StepBatches
        >>> batches = StepBatches(StackedImages(torch.rand(10, 3, 4, 4)), 2, seed=0)
        >>> torch.equal(batches(5), batches(5)), batches(5).shape
        (True, torch.Size([2, 3, 4, 4]))
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, seed: int = 0) -> None:
        self.dataset = dataset
        self.batch_size = check_positive_int("batch_size", batch_size)
        if len(cast(Sized, dataset)) < self.batch_size:
            raise ValueError(f"the dataset has {len(cast(Sized, dataset))} items, fewer than batch_size={batch_size}")
        self.seed = int(seed)

    def indices(self, step: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(step))
        return torch.randperm(len(cast(Sized, self.dataset)), generator=generator)[: self.batch_size]

    def __call__(self, step: int) -> torch.Tensor:
        return torch.stack([self.dataset[int(i)] for i in self.indices(step)])


class StackedImages(Dataset):
    """A dataset over an in-memory stack of images.

    Args:
        images: the images.

    Shape:
        - images: (N, C, H, W); each item: (C, H, W).

    Example:
        >>> import torch
        >>> from cxlib.training import StackedImages
        >>> data = StackedImages(torch.rand(5, 3, 8, 8))
        >>> len(data), data[2].shape
        (5, torch.Size([3, 8, 8]))
    """

    def __init__(self, images: torch.Tensor) -> None:
        self.images = check_tensor("images", images, ndim=4)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


class ImageFolder(Dataset):
    """The images of a folder (sorted by name), as (3, size, size) tensors in [0, 1].

    Args:
        root: the folder.
        size: the side of the square images returned.
        extensions: file endings to take.

    Example:
        >>> import tempfile, pathlib, numpy as np, imageio.v3 as iio
        >>> from cxlib.training import ImageFolder
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ("b.png", "a.png"):
        ...     iio.imwrite(root / name, np.zeros((10, 12, 3), np.uint8))
        >>> folder = ImageFolder(root, 8)
        >>> [p.name for p in folder.files], folder[0].shape
        (['a.png', 'b.png'], torch.Size([3, 8, 8]))
    """

    def __init__(self, root: str | Path, size: int, *,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS) -> None:
        self.root = Path(root)
        self.size = check_positive_int("size", size)
        if not self.root.is_dir():
            raise FileNotFoundError(f"no such folder: {self.root}")
        self.files = sorted(p for p in self.root.iterdir() if p.suffix.lower() in extensions)
        if not self.files:
            raise FileNotFoundError(
                f"{self.root} holds no images (looked for {', '.join(extensions)})"
            )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        return read_image_file(self.files[index], self.size)


class VideoFrames(StackedImages):
    """The frames of a video file (GIF with Pillow; MP4 and others with imageio's pyav or ffmpeg
    plugin), read once into memory as (3, size, size) tensors.

    Args:
        path: the video file.
        size: the side of the square frames.
        every: keep every ``every``-th frame.
        max_frames: keep at most this many frames.

    Example:
        >>> import tempfile, pathlib, torch
        >>> from cxlib.training import VideoFrames, write_video
        >>> clip = write_video(torch.rand(6, 3, 8, 8), pathlib.Path(tempfile.mkdtemp()) / "c.gif")
        >>> VideoFrames(clip, 4, every=2).images.shape
        torch.Size([3, 3, 4, 4])
    """

    def __init__(self, path: str | Path, size: int, *, every: int = 1,
                 max_frames: int | None = None) -> None:
        iio = _imageio()

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such video file: {path}")
        size = check_positive_int("size", size)
        every = check_positive_int("every", every)
        max_frames = check_positive_int("max_frames", max_frames, allow_none=True)
        frames = []
        try:
            for k, frame in enumerate(iio.imiter(path)):
                if k % every:
                    continue
                frames.append(square_resize(image_from_array(frame), size))
                if max_frames is not None and len(frames) >= max_frames:
                    break
        except (OSError, ValueError, ImportError) as error:
            raise OSError(
                f"could not read the video {path} ({type(error).__name__}: {error}). GIF files "
                "need only Pillow; for MP4 and other formats install a video plugin for "
                "imageio: pip install av (or imageio-ffmpeg)."
            ) from error
        if not frames:
            raise ValueError(f"the video {path} has no frames")
        super().__init__(torch.stack(frames))


def write_video(frames: torch.Tensor, path: str | Path, *, fps: float = 10.0) -> Path:
    """Write frames to a GIF (or any format imageio can write, by the file's ending).

    Args:
        frames: the frames, in [0, 1].
        path: the file to write; its folder is created.
        fps: frames per second.

    Shape:
        - frames: (T, 3, H, W).

    Returns:
        ``path``, as a :class:`~pathlib.Path`.

    Example:
        >>> import tempfile, pathlib, torch
        >>> from cxlib.training import VideoFrames, write_video
        >>> path = write_video(torch.rand(3, 3, 8, 8), pathlib.Path(tempfile.mkdtemp()) / "clip.gif")
        >>> len(VideoFrames(path, 8))
        3
    """
    iio = _imageio()

    frames = check_tensor("frames", frames, ndim=4)
    array = (frames.detach().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, array, duration=1000.0 / fps, loop=0)
    return path


def edge_map(images: torch.Tensor) -> torch.Tensor:
    """A line drawing of images: the Sobel gradient magnitude of the luminance, scaled to [0, 1] per
    image. The structural input of the puppet-control application.

    Args:
        images: RGB images.

    Shape:
        - images: (B, 3, H, W).
        - Output: (B, 1, H, W), in the dtype of ``images``.

    Returns:
        The edge maps.

    Example:
        >>> import torch
        >>> from cxlib.training import edge_map
        >>> x = torch.zeros(1, 3, 4, 6); x[..., 3:] = 1.0
        >>> edge_map(x)[0, 0, 0].tolist()
        [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    """
    images = check_tensor("images", images, ndim=4)
    like: dict[str, Any] = {"dtype": images.dtype, "device": images.device}
    # ITU-R 601 luma with weights summing to 1 (torchvision's rgb_to_grayscale uses 0.2989, whose
    # sum 0.9999 leaves rounding ripples on flat white areas).
    grey = (images * torch.tensor([0.299, 0.587, 0.114], **like).view(1, 3, 1, 1)).sum(1, keepdim=True)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], **like)
    kernels = torch.stack([kx, kx.T]).unsqueeze(1)
    grad = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kernels)
    magnitude = grad.square().sum(1, keepdim=True).sqrt()
    return magnitude / magnitude.flatten(1).amax(1).clamp_min(1e-8).view(-1, 1, 1, 1)


# Extraction of img_align_celeba.zip: the staging folders' prefix, when a left-over one counts
# as stale, and how other torchrun ranks wait for local rank 0.
_STAGING_PREFIX = ".img_align_celeba-extracting-"
_STALE_STAGING_SECONDS = 3600.0
_EXTRACTION_WAIT_SECONDS = 4 * 3600.0
_EXTRACTION_POLL_SECONDS = 5.0

_CELEBA_HELP = (
    "CelebA is not downloaded automatically (torchvision's download from Google Drive often "
    "fails on its quota). Get 'img_align_celeba.zip', 'list_attr_celeba.txt' and "
    "'list_eval_partition.txt' from the CelebA page "
    "(https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html) or a mirror such as Kaggle's "
    "'jessicali9530/celeba-dataset', and put them in {root} as:\n"
    "  {root}/img_align_celeba/000001.jpg ...   (the zip may stay unextracted)\n"
    "  {root}/list_attr_celeba.txt\n"
    "  {root}/list_eval_partition.txt"
)


class CelebAAttribute(Dataset):
    """CelebA faces that have (or lack) one attribute, e.g. the male/female split of the domain
    transfer chapter, read from a local folder.

    Args:
        root: the folder (see the error message for its layout). ``img_align_celeba.zip`` is
            extracted there on first use if the image folder is missing.
        attribute: a column of ``list_attr_celeba.txt``, e.g. ``"Male"``.
        present: True for the faces with the attribute (+1), False for those without (-1).
        split: ``"train"``, ``"valid"``, ``"test"`` or ``"all"``.
        size: side of the square images returned (the centred 178x178 crop, resized).

    Raises:
        FileNotFoundError: the data is missing; the message says what to put where.
        ValueError: an unknown attribute or split, or a corrupted zip file.

    Example:
        >>> from cxlib.training import CelebAAttribute
        >>> CelebAAttribute("data/celeba", attribute="Male", present=False)  # doctest: +SKIP
    """

    SPLITS = {"train": "0", "valid": "1", "test": "2"}

    def __init__(self, root: str | Path, *, attribute: str = "Male", present: bool = True,
                 split: str = "train", size: int = 128) -> None:
        self.root = Path(root)
        self.size = check_positive_int("size", size)
        if split not in (*self.SPLITS, "all"):
            raise ValueError(f"split must be one of 'train', 'valid', 'test', 'all', got {split!r}")
        attributes_file = self.root / "list_attr_celeba.txt"
        partition_file = self.root / "list_eval_partition.txt"
        missing = [p.name for p in (attributes_file, partition_file) if not p.is_file()]
        self.image_dir = self.root / "img_align_celeba"
        if not self.image_dir.is_dir():
            archive = self.root / "img_align_celeba.zip"
            if archive.is_file():
                self._extract(archive)
            else:
                missing.append("img_align_celeba/ (or img_align_celeba.zip)")
        if missing:
            raise FileNotFoundError(
                f"CelebA is incomplete in {self.root}: missing {', '.join(missing)}.\n"
                + _CELEBA_HELP.format(root=self.root)
            )
        lines = attributes_file.read_text().split("\n")
        names = lines[1].split()
        if attribute not in names:
            raise ValueError(f"unknown CelebA attribute {attribute!r}; valid: {', '.join(names)}")
        column = names.index(attribute) + 1
        partition = dict(line.split() for line in partition_file.read_text().split("\n") if line.strip())
        wanted = "1" if present else "-1"
        self.files = [
            fields[0]
            for fields in (line.split() for line in lines[2:] if line.strip())
            if fields[column] == wanted and (split == "all" or partition[fields[0]] == self.SPLITS[split])
        ]
        if not self.files:
            raise ValueError(f"no CelebA faces with {attribute}={'+1' if present else '-1'} in split {split!r}")

    def _extract(self, archive: Path) -> None:
        """Extract the images into a staging folder beside the final one and rename it when
        complete, so that an interrupted extraction never leaves an ``img_align_celeba`` folder
        that a later run would take as complete.

        Under torchrun only local rank 0 extracts; the other ranks of the machine wait for its
        folder. A staging folder that a killed run left behind is removed once it is an hour
        old (a younger one may belong to another process extracting right now).
        """
        if int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1 and int(os.environ.get("LOCAL_RANK", "0")) != 0:
            self._wait_for_extraction()
            return
        for stale in self.root.glob(f"{_STAGING_PREFIX}*"):
            if stale.is_dir() and time.time() - stale.stat().st_mtime > _STALE_STAGING_SECONDS:
                shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=self.root))
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(staging)
            # The zip holds img_align_celeba/...; a repacked one may hold the images at its top.
            inner = staging / "img_align_celeba"
            try:
                (inner if inner.is_dir() else staging).rename(self.image_dir)
            except OSError:
                if not self.image_dir.is_dir():  # not another process's complete folder
                    raise
        except zipfile.BadZipFile as error:
            raise ValueError(
                f"{archive} is not a valid zip file (a download cut short, or Google Drive's "
                "'quota exceeded' page saved under that name): delete it and download it again.\n"
                + _CELEBA_HELP.format(root=self.root)
            ) from error
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _wait_for_extraction(self) -> None:
        deadline = time.monotonic() + _EXTRACTION_WAIT_SECONDS
        while not self.image_dir.is_dir():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"waited {_EXTRACTION_WAIT_SECONDS / 60:.0f} min for local rank 0 to extract "
                    f"{self.root / 'img_align_celeba.zip'}; extract it once before starting torchrun"
                )
            time.sleep(_EXTRACTION_POLL_SECONDS)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        return read_image_file(self.image_dir / self.files[index], self.size)
