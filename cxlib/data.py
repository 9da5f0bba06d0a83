"""Data for the trained applications: image folders, video frames, CelebA by attribute, and the
synthetic data the book trains on offline (a moving photograph, drawn faces with and without
coloured lips, edge drawings).

Every dataset returns float images (3, S, S) in [0, 1], cropped to a centred square and resized.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from ._checks import check_positive_int, check_tensor
from .images import image_from_array, misalign

__all__ = [
    "IMAGE_EXTENSIONS",
    "CelebAAttribute",
    "ImageFolder",
    "StackedImages",
    "VideoFrames",
    "edge_map",
    "read_image_file",
    "square_resize",
    "synthetic_faces",
    "synthetic_video",
    "write_video",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def square_resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """Crop the centred square of a (C, H, W) image and resize it to ``size`` x ``size``."""
    _, height, width = image.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[:, top : top + side, left : left + side]
    return TF.resize(square, [size, size], antialias=True).clamp(0.0, 1.0)


def read_image_file(path: str | Path, size: int) -> torch.Tensor:
    """One image file as (3, size, size) in [0, 1]: 8- or 16-bit, float, grey, RGB(A) or palette
    (see :func:`cxlib.images.image_from_array`); the first frame of an animation."""
    import imageio.v3 as iio

    return square_resize(image_from_array(iio.imread(path, index=0)), size)


class StackedImages(Dataset):
    """A dataset over an in-memory stack of images (N, 3, S, S)."""

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
    """

    def __init__(self, path: str | Path, size: int, *, every: int = 1,
                 max_frames: int | None = None) -> None:
        import imageio.v3 as iio

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
    """Write frames (T, 3, H, W) in [0, 1] to a GIF (or any format imageio can write)."""
    import imageio.v3 as iio

    frames = check_tensor("frames", frames, ndim=4)
    array = (frames.detach().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, array, duration=1000.0 / fps, loop=0)
    return path


def synthetic_video(image: torch.Tensor, frames: int, *, shift: float = 0.12,
                    rotation: float = 10.0, warp: float = 0.03, seed: int = 0) -> torch.Tensor:
    """A photograph that moves: it sways left and right, nods, turns and bends smoothly over
    ``frames`` frames, as a person in front of a camera might.

    Args:
        image: (1, 3, H, W) in [0, 1].
        frames: number of frames.
        shift: largest shift, as a fraction of the width.
        rotation: largest rotation, in degrees.
        warp: amplitude of the smooth deformation, as a fraction of the width.
        seed: seed of the deformation.

    Returns:
        (frames, 3, H, W).
    """
    image = check_tensor("image", image, ndim=4)
    size = image.shape[-1]
    out = []
    for t in range(check_positive_int("frames", frames)):
        phase = 2 * math.pi * t / frames
        out.append(misalign(
            image,
            shift=(0.4 * shift * size * math.sin(2 * phase), shift * size * math.sin(phase)),
            rotation=rotation * math.sin(phase + 0.7),
            warp=warp * size,
            generator=torch.Generator().manual_seed(seed + t // max(1, frames // 4)),
        ))
    return torch.cat(out)


def edge_map(images: torch.Tensor) -> torch.Tensor:
    """A line drawing of images (B, 3, H, W): Sobel gradient magnitude of the luminance, scaled
    to [0, 1] per image, (B, 1, H, W). The structural input of the puppet-control chapter."""
    images = check_tensor("images", images, ndim=4)
    like = {"dtype": images.dtype, "device": images.device}
    # ITU-R 601 luma with weights summing to 1 (torchvision's rgb_to_grayscale uses 0.2989, whose
    # sum 0.9999 leaves rounding ripples on flat white areas).
    grey = (images * torch.tensor([0.299, 0.587, 0.114], **like).view(1, 3, 1, 1)).sum(1, keepdim=True)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], **like)
    kernels = torch.stack([kx, kx.T]).unsqueeze(1)
    grad = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kernels)
    magnitude = grad.square().sum(1, keepdim=True).sqrt()
    return magnitude / magnitude.flatten(1).amax(1).clamp_min(1e-8).view(-1, 1, 1, 1)


def synthetic_faces(count: int, size: int, *, coloured_lips: bool = False, hair: bool = False,
                    seed: int = 0, layout: bool = False):
    """Drawn faces at random places: a skin-coloured head on a plain background, two eyes, a nose
    and a mouth, with (``coloured_lips=True``) or without (dark line) red lips.

    The two settings of ``coloured_lips`` make the two domains of the domain-transfer chapter:
    they differ in one visible attribute, while head position, size and colours vary freely.

    Args:
        count: number of faces.
        size: side of the images.
        coloured_lips: red lips (True) or a dark line (False).
        hair: a cap of dark red hair over the top of the head (True) or none (False).
        seed: seed of the faces' positions, sizes and colours.
        layout: also return each face's layout drawing: three channels holding the masks of the
            head, the eyes and the mouth (the structural input of the puppet-control chapter).

    Returns:
        The images (count, 3, size, size) in [0, 1], and the mouth box of each face
        (count, 4) as (top, left, bottom, right) in pixels, where the attribute is measured;
        with ``layout=True``, also the layouts (count, 3, size, size).
    """
    count = check_positive_int("count", count)
    size = check_positive_int("size", size)
    g = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float, n: int = count) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=g)

    rows, cols = torch.meshgrid(torch.arange(size, dtype=torch.float32) + 0.5,
                                torch.arange(size, dtype=torch.float32) + 0.5, indexing="ij")
    # Pale backgrounds and skin tones that vary a little: the faces differ in place, size and
    # shade, not so much that a small network needs long to reproduce them.
    grey = uniform(0.7, 0.9)
    background = torch.stack([grey + uniform(-0.05, 0.05) for _ in range(3)], dim=1)
    skin = torch.stack([uniform(0.82, 0.92), uniform(0.62, 0.72), uniform(0.48, 0.58)], dim=1)
    centre_r, centre_c = uniform(0.42, 0.58) * size, uniform(0.35, 0.65) * size
    radius_r, radius_c = uniform(0.3, 0.38) * size, uniform(0.22, 0.3) * size
    images = torch.empty(count, 3, size, size)
    layouts = torch.zeros(count, 3, size, size)
    mouths = torch.empty(count, 4)
    for k in range(count):
        image = background[k].view(3, 1, 1).expand(3, size, size).clone()

        def ellipse(cr, cc, rr, rc):
            return ((rows - cr) / rr) ** 2 + ((cols - cc) / rc) ** 2 <= 1.0

        cr, cc, rr, rc = centre_r[k], centre_c[k], radius_r[k], radius_c[k]
        head = ellipse(cr, cc, rr, rc)
        image[:, head] = skin[k].view(3, 1)
        layouts[k, 0][head] = 1.0
        if hair:
            cap = ellipse(cr - 0.08 * rr, cc, 1.05 * rr, 1.12 * rc) & (rows < cr - 0.42 * rr)
            image[:, cap] = torch.tensor([0.45, 0.12, 0.08]).view(3, 1)
        eye = torch.tensor([0.1, 0.1, 0.15]).view(3, 1)
        for side in (-1, 1):
            eye_mask = ellipse(cr - 0.25 * rr, cc + side * 0.42 * rc, 0.09 * rr, 0.16 * rc)
            image[:, eye_mask] = eye
            layouts[k, 1][eye_mask] = 1.0
        nose = ellipse(cr + 0.1 * rr, cc, 0.12 * rr, 0.08 * rc)
        image[:, nose] = (skin[k] * 0.8).view(3, 1)
        mouth_r, mouth_h, mouth_w = cr + 0.5 * rr, 0.13 * rr, 0.45 * rc
        layouts[k, 2][ellipse(mouth_r, cc, mouth_h, mouth_w)] = 1.0
        if coloured_lips:
            image[:, ellipse(mouth_r, cc, mouth_h, mouth_w)] = torch.tensor([0.85, 0.08, 0.15]).view(3, 1)
        else:
            line = ellipse(mouth_r, cc, 0.35 * mouth_h, mouth_w)
            image[:, line] = (skin[k] * 0.45).view(3, 1)
        images[k] = image
        mouths[k] = torch.tensor([mouth_r - mouth_h, cc - mouth_w, mouth_r + mouth_h, cc + mouth_w])
    # A soft edge, as a camera would give.
    images = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    if layout:
        return images.clamp(0, 1), mouths, layouts
    return images.clamp(0, 1), mouths


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
        """Extract the images into a temporary folder beside the final one and rename it when
        complete, so that an interrupted extraction never leaves an ``img_align_celeba`` folder
        that a later run would take as complete."""
        staging = Path(tempfile.mkdtemp(prefix=".img_align_celeba-extracting-", dir=self.root))
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(staging)
            # The zip holds img_align_celeba/...; a repacked one may hold the images at its top.
            inner = staging / "img_align_celeba"
            (inner if inner.is_dir() else staging).rename(self.image_dir)
        except zipfile.BadZipFile as error:
            raise ValueError(
                f"{archive} is not a valid zip file (a download cut short, or Google Drive's "
                "'quota exceeded' page saved under that name): delete it and download it again.\n"
                + _CELEBA_HELP.format(root=self.root)
            ) from error
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        return read_image_file(self.image_dir / self.files[index], self.size)
