"""Real photographs that work offline, and the misalignments the book puts them through.

Photographs come from scikit-image's bundled data (no download). Images are float tensors
(B, 3, H, W) in [0, 1]; every transform is made of differentiable torch operations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from .._checks import check_nonnegative, check_tensor
from .._optional import require
from ..training.data import image_from_array

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "PHOTOGRAPHS",
    "add_noise",
    "load_image",
    "misalign",
    "misalignment_grid",
    "smooth_warp_field",
    "to_numpy_image",
]

#: Names of the photographs (colour or grey) bundled with scikit-image that :func:`load_image` takes.
PHOTOGRAPHS = ("astronaut", "chelsea", "coffee", "rocket", "retina", "hubble_deep_field",
               "immunohistochemistry", "colorwheel", "brick", "grass", "gravel", "camera")


def load_image(name: str, size: int | Sequence[int] | None = None, *,
               crop: Sequence[int] | None = None) -> torch.Tensor:
    """A photograph bundled with scikit-image, as a float tensor in [0, 1].

    Args:
        name: one of :data:`PHOTOGRAPHS` (grey ones are repeated over RGB).
        size: resize to ``size`` x ``size``, or to (height, width); ``None`` keeps the size.
        crop: (top, left, height, width) in the original's pixels, applied before resizing.

    Shape:
        - Output: (1, 3, H, W).

    Returns:
        The photograph.

    Example:
        >>> from cxlib.book import load_image
        >>> load_image("chelsea", 64).shape
        torch.Size([1, 3, 64, 64])
    """
    if name not in PHOTOGRAPHS:
        raise ValueError(f"unknown photograph {name!r}; choose one of {', '.join(PHOTOGRAPHS)}")
    skimage_data = require("skimage.data", extra="book", purpose="load_image")
    image = image_from_array(getattr(skimage_data, name)()).unsqueeze(0)
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
    """Where each output pixel of :func:`misalign` takes its value from: the true correspondence
    between a misaligned image and its original.

    Args:
        height: rows of the image.
        width: columns of the image.
        shift: (down, right) in pixels.
        rotation: in degrees, about the centre.
        scale: > 1 zooms in.
        warp: amplitude of the smooth random deformation, in pixels; 0 for none.
        generator: random generator for the warp (the same state as given to :func:`misalign`).
        dtype: of the grid.
        device: of the grid.

    Shape:
        - Output: (H, W, 2), the (row, col) in input pixels of each output pixel.

    Returns:
        The grid.

    Example:
        >>> from cxlib.book import misalignment_grid
        >>> misalignment_grid(3, 3, shift=(1, 0))[2, 1].tolist()
        [1.0, 1.0]
    """
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

    Shape:
        - images: (B, C, H, W).
        - Output: (B, C, H, W).

    Returns:
        The moved images, (B, C, H, W).

    Example:
        >>> import torch, cxlib.book.images
        >>> x = torch.zeros(1, 1, 5, 5); x[0, 0, 2, 2] = 1.0
        >>> moved = cxlib.book.images.misalign(x, shift=(1, 0))
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
    """Images plus Gaussian noise of standard deviation ``sigma``, clipped to [0, 1].

    Args:
        images: images in [0, 1].
        sigma: the noise's standard deviation, >= 0.
        generator: CPU random generator of the noise (``None``: torch's global one).

    Shape:
        - images: (B, C, H, W).
        - Output: (B, C, H, W).

    Returns:
        The noisy images, on the device and in the dtype of ``images``.

    Example:
        >>> import torch
        >>> from cxlib.book import add_noise
        >>> noisy = add_noise(torch.full((1, 3, 64, 64), 0.5), 0.1,
        ...                   generator=torch.Generator().manual_seed(0))
        >>> round(noisy.std().item(), 1)
        0.1
    """
    images = check_tensor("images", images, ndim=4)
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype).to(images.device)
    return (images + check_nonnegative("sigma", sigma) * noise).clamp(0.0, 1.0)


def to_numpy_image(image: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) or (3, H, W) tensor -> (H, W, 3) NumPy array in [0, 1], for plotting."""
    if image.dim() == 4:
        image = image[0]
    return image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
