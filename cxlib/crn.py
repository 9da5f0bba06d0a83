"""The Cascaded Refinement Network (Chen and Koltun, ICCV 2017), as the contextual loss code uses it.

A cascade of modules from 4x4 up to the output size, each doubling the resolution. Module k sees
the input image downsampled (area) to its resolution, concatenated with the bilinearly upsampled
features of module k-1, and applies two 3x3 convolutions, each followed by layer normalisation
and LeakyReLU(0.2). A final 1x1 convolution maps the last features to RGB, with no activation.

The network is described by a config list of (resolution, channels) pairs, one per module, as
torchvision describes VGG. The default is the paper's: 256x256 output, 512 channels below 128
pixels and 256 from 128 pixels on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_positive_int, check_tensor

__all__ = ["CRN", "CRN_256", "crn_config"]


def crn_config(output_size: int = 256, *, wide: int = 512, narrow: int = 256,
               narrow_from: int = 128) -> tuple[tuple[int, int], ...]:
    """The (resolution, channels) list of a CRN from 4x4 to ``output_size``.

    Args:
        output_size: side of the output; a power of two, at least 4.
        wide: channels of the modules below ``narrow_from`` pixels.
        narrow: channels of the modules from ``narrow_from`` pixels on.
        narrow_from: resolution where the width drops.

    Returns:
        ((resolution, channels), ...) from 4 pixels up to ``output_size``, for :class:`CRN`.

    Example:
        >>> import cxlib
        >>> cxlib.crn_config(32, wide=64, narrow=32, narrow_from=16)
        ((4, 64), (8, 64), (16, 32), (32, 32))
    """
    output_size = check_positive_int("output_size", output_size)
    if output_size < 4 or output_size & (output_size - 1):
        raise ValueError(f"output_size must be a power of two >= 4, got {output_size}")
    config, resolution = [], 4
    while resolution <= output_size:
        config.append((resolution, wide if resolution < narrow_from else narrow))
        resolution *= 2
    return tuple(config)


#: The paper's network: 256x256 output, widths 512/256.
CRN_256 = crn_config(256)


class _RefinementModule(nn.Module):
    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=3, padding=1)
        # Layer normalisation over (C, H, W) of each sample, with a per-channel affine.
        self.norm1 = nn.GroupNorm(1, channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.norm2 = nn.GroupNorm(1, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.norm1(self.conv1(x)), 0.2)
        return F.leaky_relu(self.norm2(self.conv2(x)), 0.2)


class CRN(nn.Module):
    """Cascaded Refinement Network: an image in, an image of ``config[-1][0]`` pixels out.

    Args:
        config: (resolution, channels) per module, resolutions doubling from 4; default
            :data:`CRN_256`. Build others with :func:`crn_config`.
        in_channels: channels of the input image (3 for RGB, 1 for an edge map).
        out_channels: channels of the output (3 for RGB).

    Shape:
        - Input: (B, in_channels, H, W), any H and W (resized to each module's resolution).
        - Output: (B, out_channels, S, S) with S = ``config[-1][0]``; values are not squashed
          (the losses compare them as images in [0, 1]).

    Example:
        >>> import torch, cxlib
        >>> net = cxlib.CRN(cxlib.crn_config(16, wide=8, narrow=4, narrow_from=16))
        >>> net(torch.rand(2, 3, 20, 24)).shape
        torch.Size([2, 3, 16, 16])
    """

    def __init__(self, config: Sequence[tuple[int, int]] = CRN_256, *, in_channels: int = 3,
                 out_channels: int = 3) -> None:
        super().__init__()
        config = tuple((int(r), int(c)) for r, c in config)
        if not config:
            raise ValueError("config must list at least one (resolution, channels) module")
        expected = 4
        for resolution, channels in config:
            if resolution != expected:
                raise ValueError(
                    f"config resolutions must double from 4 (4, 8, 16, ...), got {[r for r, _ in config]}"
                )
            check_positive_int("channels", channels)
            expected *= 2
        self.config = config
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int("out_channels", out_channels)
        modules, previous = [], 0
        for _, channels in config:
            modules.append(_RefinementModule(in_channels + previous, channels))
            previous = channels
        self.refinement = nn.ModuleList(modules)
        self.to_rgb = nn.Conv2d(previous, out_channels, kernel_size=1)

    @property
    def output_size(self) -> int:
        return self.config[-1][0]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        image = check_tensor("image", image, ndim=4)
        if image.shape[1] != self.in_channels:
            raise ValueError(
                f"image must have {self.in_channels} channels, got shape {tuple(image.shape)}"
            )
        features = None
        for (resolution, _), module in zip(self.config, self.refinement):
            small = F.interpolate(image, size=(resolution, resolution), mode="area")
            if features is not None:
                features = F.interpolate(features, size=(resolution, resolution),
                                         mode="bilinear", align_corners=False)
                small = torch.cat([small, features], dim=1)
            features = module(small)
        return self.to_rgb(features)

    def extra_repr(self) -> str:
        return f"config={list(self.config)}"
