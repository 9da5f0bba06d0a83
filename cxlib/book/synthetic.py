"""The synthetic data the book trains on offline: a photograph that moves (the animation
chapter), and drawn faces with and without coloured lips (the puppet and domain-transfer
chapters)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._checks import check_positive_int, check_tensor
from .images import misalign

__all__ = ["synthetic_faces", "synthetic_video"]


def synthetic_video(image: torch.Tensor, frames: int, *, shift: float = 0.12,
                    rotation: float = 10.0, warp: float = 0.03, seed: int = 0) -> torch.Tensor:
    """A photograph that moves: it sways left and right, nods, turns and bends smoothly over
    ``frames`` frames, as a person in front of a camera might.

    Args:
        image: the photograph, in [0, 1].
        frames: number of frames.
        shift: largest shift, as a fraction of the width.
        rotation: largest rotation, in degrees.
        warp: amplitude of the smooth deformation, as a fraction of the width.
        seed: seed of the deformation.

    Shape:
        - image: (1, 3, H, W).
        - Output: (frames, 3, H, W).

    Returns:
        The frames.

    Example:
        >>> import torch
        >>> from cxlib.book import synthetic_video
        >>> synthetic_video(torch.rand(1, 3, 32, 32), 4).shape
        torch.Size([4, 3, 32, 32])
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


def synthetic_faces(count: int, size: int, *, coloured_lips: bool = False, hair: bool = False,
                    seed: int = 0, layout: bool = False,
                    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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

    Example:
        >>> from cxlib.book import synthetic_faces
        >>> faces, mouths = synthetic_faces(2, 32, coloured_lips=True)
        >>> faces.shape, mouths.shape
        (torch.Size([2, 3, 32, 32]), torch.Size([2, 4]))
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
