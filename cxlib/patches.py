"""Raw RGB patches as features: the pretrained-free choice (as CoBi's RGB term)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_positive_int, check_tensor

__all__ = ["PatchFeatures", "patch_features"]


def patch_features(images: torch.Tensor, *, size: int = 5, stride: int = 1) -> torch.Tensor:
    """Every ``size`` x ``size`` patch of the images as one feature vector.

    Args:
        images: (B, C, H, W).
        size: the side of a patch.
        stride: the step between patches.

    Shape:
        - Input: (B, C, H, W) with H, W >= size.
        - Output: (B, C * size * size, (H - size) // stride + 1, (W - size) // stride + 1); the
          channel index is c * size * size + row * size + column within the patch.

    Returns:
        The patches as a feature map.

    Example:
        >>> import torch, cxlib
        >>> cxlib.patch_features(torch.rand(2, 3, 16, 12), size=5, stride=1).shape
        torch.Size([2, 75, 12, 8])
    """
    images = check_tensor("images", images, ndim=4)
    size = check_positive_int("size", size)
    stride = check_positive_int("stride", stride)
    height, width = images.shape[2:]
    if height < size or width < size:
        raise ValueError(
            f"images must be at least {size}x{size} for patches of size {size}, "
            f"got shape {tuple(images.shape)}"
        )
    out_h, out_w = (height - size) // stride + 1, (width - size) // stride + 1
    patches = F.unfold(images, kernel_size=size, stride=stride)
    return patches.reshape(images.shape[0], -1, out_h, out_w)


class PatchFeatures(nn.Module):
    """Module form of :func:`patch_features`.

    Args:
        size: the side of a patch.
        stride: the step between patches.

    Example:
        >>> import torch, cxlib
        >>> cxlib.PatchFeatures(size=3, stride=2)(torch.rand(1, 3, 9, 9)).shape
        torch.Size([1, 27, 4, 4])
    """

    #: Patch features have no weights to learn or to download.
    pretrained = False
    weights_source = "raw RGB patches"

    def __init__(self, size: int = 5, stride: int = 1) -> None:
        super().__init__()
        self.size = check_positive_int("size", size)
        self.stride = check_positive_int("stride", stride)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return patch_features(images, size=self.size, stride=self.stride)

    def extra_repr(self) -> str:
        return f"size={self.size}, stride={self.stride}"
