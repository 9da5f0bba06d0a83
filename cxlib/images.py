"""Real photographs that work offline, and the misalignments the book puts them through.

Photographs come from scikit-image's bundled data (no download). Images are float tensors
(B, 3, H, W) in [0, 1]; every transform is made of differentiable torch operations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from ._checks import check_nonnegative, check_tensor

__all__ = [
    "PHOTOGRAPHS",
    "add_noise",
    "colour_distance",
    "edge_correlation",
    "image_from_array",
    "load_image",
    "misalign",
    "misalignment_grid",
    "psnr",
    "smooth_warp_field",
    "ssim",
    "to_numpy_image",
]

#: Names of the photographs (colour or grey) bundled with scikit-image that :func:`load_image` takes.
PHOTOGRAPHS = ("astronaut", "chelsea", "coffee", "rocket", "retina", "hubble_deep_field",
               "immunohistochemistry", "colorwheel", "brick", "grass", "gravel", "camera")


def image_from_array(array) -> torch.Tensor:
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
        >>> import numpy as np, cxlib.images
        >>> cxlib.images.image_from_array(np.full((2, 2), 65535, np.uint16)).unique().tolist()
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


def load_image(name: str, size: int | Sequence[int] | None = None, *,
               crop: Sequence[int] | None = None) -> torch.Tensor:
    """A photograph bundled with scikit-image as a (1, 3, H, W) float tensor in [0, 1].

    Args:
        name: one of :data:`PHOTOGRAPHS` (grey ones are repeated over RGB).
        size: resize to ``size`` x ``size``, or to (height, width); ``None`` keeps the size.
        crop: (top, left, height, width) in the original's pixels, applied before resizing.

    Example:
        >>> import cxlib.images
        >>> cxlib.images.load_image("chelsea", 64).shape
        torch.Size([1, 3, 64, 64])
    """
    if name not in PHOTOGRAPHS:
        raise ValueError(f"unknown photograph {name!r}; choose one of {', '.join(PHOTOGRAPHS)}")
    try:
        import skimage.data
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("load_image needs scikit-image: pip install scikit-image") from error
    image = image_from_array(getattr(skimage.data, name)()).unsqueeze(0)
    if crop is not None:
        top, left, height, width = crop
        image = image[:, :, top : top + height, left : left + width]
    if size is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        image = TF.resize(image, list(hw), antialias=True)
    return image.clamp(0.0, 1.0).contiguous()


def smooth_warp_field(height: int, width: int, *, amplitude: float, smoothness: int = 4,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """A smooth random displacement field (1, H, W, 2), in pixels, of roughly ``amplitude``.

    Random displacements on a coarse ``smoothness`` x ``smoothness`` grid, upsampled bicubically:
    a non-rigid deformation, like a face that moved or cloth that folded.
    """
    coarse = torch.randn(1, 2, smoothness, smoothness, generator=generator)
    field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)
    return (field * amplitude).permute(0, 2, 3, 1)


def misalignment_grid(height: int, width: int, *, shift: Sequence[float] = (0.0, 0.0),
                      rotation: float = 0.0, scale: float = 1.0, warp: float = 0.0,
                      generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Where each output pixel of :func:`misalign` takes its value from, (H, W, 2) as (row, col)
    in input pixels: the true correspondence between a misaligned image and its original."""
    check_nonnegative("warp", warp)
    # Output pixel p samples the input at R^-1 (p - shift) / scale, in pixels about the centre.
    rows = torch.arange(height, dtype=dtype, device=device) - (height - 1) / 2
    cols = torch.arange(width, dtype=dtype, device=device) - (width - 1) / 2
    grid_r, grid_c = torch.meshgrid(rows - shift[0], cols - shift[1], indexing="ij")
    angle = math.radians(rotation)
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    source = torch.stack([sin * grid_c + cos * grid_r, cos * grid_c - sin * grid_r], dim=-1)
    if warp > 0:
        field = smooth_warp_field(height, width, amplitude=warp, generator=generator)[0]
        source = source + field.to(dtype=dtype, device=device)
    centre = torch.tensor([(height - 1) / 2, (width - 1) / 2], dtype=dtype, device=device)
    return source + centre


def misalign(images: torch.Tensor, *, shift: Sequence[float] = (0.0, 0.0), rotation: float = 0.0,
             scale: float = 1.0, warp: float = 0.0, generator: torch.Generator | None = None
             ) -> torch.Tensor:
    """Move the content of images: shift (pixels, (down, right)), rotate (degrees, about the
    centre), scale, and warp with a smooth random field of amplitude ``warp`` pixels.

    Pixels that come from outside the image repeat the border (no black corners that a loss
    could lock onto). :func:`misalignment_grid` gives, for the same arguments and generator
    state, where each output pixel came from.

    Args:
        images: (B, C, H, W).
        shift: (down, right) in pixels.
        rotation: in degrees, about the centre.
        scale: > 1 zooms in.
        warp: amplitude of the smooth random deformation, in pixels; 0 for none.
        generator: random generator for the warp.

    Returns:
        The moved images, (B, C, H, W).

    Example:
        >>> import torch, cxlib.images
        >>> x = torch.zeros(1, 1, 5, 5); x[0, 0, 2, 2] = 1.0
        >>> moved = cxlib.images.misalign(x, shift=(1, 0))
        >>> moved[0, 0, 3, 2].item()
        1.0
    """
    images = check_tensor("images", images, ndim=4)
    batch, _, height, width = images.shape
    source = misalignment_grid(height, width, shift=shift, rotation=rotation, scale=scale,
                               warp=warp, generator=generator, dtype=images.dtype,
                               device=images.device)
    # To grid_sample's (x, y) in [-1, 1] (align_corners=True: -1 and 1 are the edge pixels' centres).
    half = torch.tensor([(height - 1) / 2, (width - 1) / 2], dtype=images.dtype, device=images.device)
    normalised = (source / half.clamp_min(0.5) - 1.0).flip(-1)
    return F.grid_sample(images, normalised.unsqueeze(0).expand(batch, -1, -1, -1),
                         mode="bilinear", padding_mode="border", align_corners=True)


def add_noise(images: torch.Tensor, sigma: float, *, generator: torch.Generator | None = None
              ) -> torch.Tensor:
    """Images plus Gaussian noise of standard deviation ``sigma``, clipped to [0, 1]."""
    images = check_tensor("images", images, ndim=4)
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype).to(images.device)
    return (images + check_nonnegative("sigma", sigma) * noise).clamp(0.0, 1.0)


def _image_pairs(images: object, reference: object):
    """(image, reference) pairs as (H, W, C) float64 NumPy arrays, for scikit-image's metrics;
    one reference image serves a whole batch."""
    images = check_tensor("images", images, ndim=4)
    reference = check_tensor("reference", reference, ndim=4)
    if images.shape[1:] != reference.shape[1:] or reference.shape[0] not in (1, images.shape[0]):
        raise ValueError(
            "images and reference must have the same (C, H, W) and reference one image or as "
            f"many as images, got images {tuple(images.shape)} and reference {tuple(reference.shape)}"
        )
    a = images.detach().double().cpu().permute(0, 2, 3, 1).numpy()
    b = reference.detach().double().cpu().permute(0, 2, 3, 1).numpy()
    return [(a[k], b[k if b.shape[0] > 1 else 0]) for k in range(a.shape[0])]


def psnr(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of images in [0, 1] against a reference, per sample (B,).

    scikit-image's ``peak_signal_noise_ratio`` with ``data_range=1``, so the numbers are the
    ones other papers report: :math:`10 \\log_{10}(1 / \\mathrm{MSE})`, infinite for equal
    images. For figures and tables: not differentiable (the images go to the CPU).

    Shape:
        - images: (B, C, H, W); reference: (B, C, H, W) or (1, C, H, W).
        - Output: (B,), float64, on the CPU.
    """
    from skimage.metrics import peak_signal_noise_ratio

    with np.errstate(divide="ignore"):  # equal images: inf, as scikit-image says
        values = [peak_signal_noise_ratio(b, a, data_range=1.0) for a, b in _image_pairs(images, reference)]
    return torch.tensor(values, dtype=torch.float64)


def ssim(images: torch.Tensor, reference: torch.Tensor, *, window: int = 7) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) of images in [0, 1], per sample (B,).

    scikit-image's ``structural_similarity`` with ``data_range=1`` and its defaults: uniform
    ``window`` x ``window`` windows, K1 = 0.01, K2 = 0.03, sample covariances, the mean over the
    channels and the positions where the window fits. For figures and tables: not
    differentiable (the images go to the CPU).

    Shape:
        - images: (B, C, H, W) with H, W >= ``window``; reference: (B, C, H, W) or (1, C, H, W).
        - Output: (B,), float64, on the CPU.
    """
    from skimage.metrics import structural_similarity

    values = [structural_similarity(b, a, data_range=1.0, channel_axis=-1, win_size=window)
              for a, b in _image_pairs(images, reference)]
    return torch.tensor(values, dtype=torch.float64)


def edge_correlation(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of the edge maps (:func:`cxlib.edge_map`) of two image batches, per
    sample (B,): 1 when the edges are in the same places, about 0 when unrelated. Measures
    whether an output kept the layout of its input, whatever their colours."""
    from .data import edge_map

    a = edge_map(images).flatten(1)
    b = edge_map(reference).flatten(1)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)


def colour_distance(images: torch.Tensor, reference: torch.Tensor, *, projections: int = 64,
                    seed: int = 0) -> torch.Tensor:
    """How far the colours of images are from the colours of a reference, per sample (B,):
    the sliced Wasserstein-1 distance between their sets of RGB pixels, averaged over
    ``projections`` random directions. 0 for the same palette in any arrangement.

    ``reference`` is (B, 3, H', W') or one image (1, 3, H', W') for all; sizes may differ
    (the pixel sets are compared through their quantiles).
    """
    images = check_tensor("images", images, ndim=4)
    reference = check_tensor("reference", reference, ndim=4)
    directions = torch.randn(projections, 3, generator=torch.Generator().manual_seed(seed))
    directions = (directions / directions.norm(dim=1, keepdim=True)).to(images)
    count = min(images[0, 0].numel(), reference[0, 0].numel())
    levels = (torch.arange(count, dtype=images.dtype, device=images.device) + 0.5) / count

    def quantiles(batch: torch.Tensor) -> torch.Tensor:
        projected = torch.einsum("bcn,pc->bpn", batch.flatten(2), directions)
        return torch.quantile(projected, levels, dim=-1)  # (count, B, P)

    a, b = quantiles(images), quantiles(reference)
    return (a - b).abs().mean(dim=(0, 2))


def to_numpy_image(image: torch.Tensor):
    """(1, 3, H, W) or (3, H, W) tensor -> (H, W, 3) NumPy array in [0, 1], for plotting."""
    if image.dim() == 4:
        image = image[0]
    return image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
