"""Figures the book draws: image rows, and the correspondences the contextual loss finds.

Needs matplotlib (``pip install cxlib[book]``). Every function returns the figure it drew.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .._optional import require
from ..training.data import write_video
from .images import to_numpy_image

if TYPE_CHECKING:
    from IPython.display import HTML
    from matplotlib.figure import Figure

    from ..contextual.matrices import ContextualMatrices

__all__ = [
    "correspondence_field",
    "position_colors",
    "show_animation",
    "show_correspondence",
    "show_images",
]


def _pyplot():
    return require("matplotlib.pyplot", extra="book", purpose="cxlib.book.plot")


def _height_over_width(image) -> float:
    """H / W of an image given as (1, 3, H, W), (3, H, W) or (H, W) tensor, or (H, W[, 3]) array."""
    shape = tuple(image.shape)
    if isinstance(image, torch.Tensor):
        height, width = shape[-2:]
    else:
        height, width = shape[:2]
    return height / max(width, 1)


def show_images(images: Sequence[torch.Tensor], titles: Sequence[str] | None = None, *,
                ncols: int | None = None, size: float = 2.6, suptitle: str | None = None) -> Figure:
    """Draw images in a row or grid, without axes.

    Args:
        images: the images, in [0, 1].
        titles: one title per image, or ``None``.
        ncols: images per row (``None``: all in one row).
        size: inches per image.
        suptitle: a title over the figure.

    Shape:
        - Each image: (1, 3, H, W), (3, H, W) or (H, W).

    Returns:
        The matplotlib figure.

    Example:
        >>> import torch
        >>> from cxlib.book import show_images
        >>> fig = show_images([torch.rand(3, 8, 8), torch.rand(8, 8)], ["colour", "grey"])
        >>> len(fig.axes)
        2
    """
    plt = _pyplot()
    count = len(images)
    ncols = ncols or count
    nrows = -(-count // ncols)
    # At most 11 inches wide: wider figures are shrunk to the page and their titles with them.
    size = min(size, 11.0 / ncols)
    # Rows as tall as their images (a strip of samples is wide and short): no blank bands.
    aspect = max(_height_over_width(image) for image in images) if count else 1.0
    height = size * aspect * nrows + (0.4 if suptitle else 0.0) + (0.3 if titles else 0.0) * nrows
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, height), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= count:
            continue
        image = images[k]
        if isinstance(image, torch.Tensor) and image.dim() == 2:
            ax.imshow(image.detach().cpu().numpy(), cmap="viridis")
        else:
            ax.imshow(to_numpy_image(image) if isinstance(image, torch.Tensor) else image)
        if titles is not None:
            ax.set_title(titles[k], fontsize=10)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    return fig


def position_colors(height: int, width: int) -> np.ndarray:
    """A colour for every position of an (H, W) grid, (H, W, 3) in [0, 1]: hue by the angle
    about the centre and saturation by the distance from it, so that nearby positions have
    similar colours and every position has its own."""
    import colorsys

    rows, cols = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    hue = (np.arctan2(rows, cols) / (2 * np.pi)) % 1.0
    sat = np.clip(np.hypot(rows, cols) / np.sqrt(2), 0, 1)
    colors = np.array([colorsys.hsv_to_rgb(h, 0.15 + 0.85 * s, 0.95) for h, s in
                       zip(hue.ravel(), sat.ravel())])
    return colors.reshape(height, width, 3)


def correspondence_field(best_match: torch.Tensor, source_shape: Sequence[int],
                         target_shape: Sequence[int]) -> np.ndarray:
    """Colour each target position by the colour of the source position it matched.

    Args:
        best_match: for each of the N target positions, the index of its source position (as
            :attr:`cxlib.ContextualMatrices.best_match`), (N,).
        source_shape: (H, W) of the source (generated) map.
        target_shape: (H, W) of the target map.

    Returns:
        (H_target, W_target, 3) colours; a target matched to the same place in the source has the
        colour that :func:`position_colors` gives that place.
    """
    palette = position_colors(*source_shape).reshape(-1, 3)
    return palette[best_match.detach().cpu().numpy()].reshape(*target_shape, 3)


def show_correspondence(source: torch.Tensor, target: torch.Tensor, matrices: ContextualMatrices,
                        source_shape: Sequence[int], target_shape: Sequence[int], *,
                        title: str = "",
                        names: tuple[str, str] = ("source x", "target y")) -> Figure:
    """Source and target images, the source's position colours, the correspondence field (which
    source position each target position matched) and its strength max_i CX_ij.

    Args:
        source: the image whose positions are matched (rows i of CX_ij).
        target: the image whose positions look for a match (columns j).
        matrices: :func:`cxlib.contextual_matrices` of their features.
        source_shape: (H, W) of the source's feature map.
        target_shape: (H, W) of the target's feature map.
        title: the figure's title.
        names: what to call the source and the target in the panels.

    Shape:
        - source, target: (1, 3, H, W) images, at any size (the feature maps' sizes are given).

    Returns:
        The matplotlib figure.

    Example:
        >>> import torch, cxlib
        >>> from cxlib.book import show_correspondence
        >>> x = torch.rand(1, 3, 16, 16)
        >>> m = cxlib.contextual_matrices(x, x)
        >>> fig = show_correspondence(x, x, m, (16, 16), (16, 16))
        >>> len(fig.axes) >= 4
        True
    """
    plt = _pyplot()
    # Constrained layout leaves room for a title of several lines above the panels' own
    # two-line titles (tight_layout let them overlap).
    fig, axes = plt.subplots(1, 5, figsize=(12.5, 3.0 + 0.2 * title.count("\n")),
                             layout="constrained")
    strength = matrices.best_similarity.detach().cpu().reshape(*target_shape).numpy()
    source_name, target_name = names
    panels = [
        (to_numpy_image(source), source_name),
        (position_colors(*source_shape), f"colour of each {source_name.split()[0]} position"),
        (to_numpy_image(target), target_name),
        (correspondence_field(matrices.best_match, source_shape, target_shape),
         f"{target_name.split()[0]} positions coloured by\nthe {source_name.split()[0]} position matched"),
    ]
    for ax, (image, label) in zip(axes, panels):
        ax.imshow(image)
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    shown = axes[4].imshow(strength, cmap="magma", vmin=0)
    axes[4].set_title("strength: max over i of CX_ij", fontsize=9)
    axes[4].axis("off")
    fig.colorbar(shown, ax=axes[4], fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def show_animation(frames: torch.Tensor, path: str | Path, *, fps: float = 8.0, alt: str = "",
                   max_width: int = 720) -> HTML:
    """Write frames to a GIF and show it inline: in the notebook, in Colab and on the book's
    HTML page (the GIF is embedded in the page, not linked).

    Args:
        frames: the frames, in [0, 1]; several videos side by side are one wider video
            (``torch.cat(videos, dim=3)``).
        path: where to write the GIF (its folder is created).
        fps: frames per second.
        alt: the image's text for screen readers (say what the columns are).
        max_width: the largest width on the page, in CSS pixels.

    Shape:
        - frames: (T, 3, H, W).

    Returns:
        An ``IPython.display.HTML`` holding the GIF; a notebook shows it when it is the last
        expression of a cell, or with ``display(...)``.

    Example:
        >>> import tempfile, pathlib, torch
        >>> from cxlib.book import show_animation
        >>> html = show_animation(torch.rand(4, 3, 8, 8), pathlib.Path(tempfile.mkdtemp()) / "a.gif",
        ...                       alt="noise")
        >>> html.data.startswith('<img src="data:image/gif;base64,')
        True
    """
    display = require("IPython.display", extra="book", purpose="show_animation")
    gif = write_video(frames, path, fps=fps)
    encoded = base64.b64encode(gif.read_bytes()).decode()
    return display.HTML(
        f'<img src="data:image/gif;base64,{encoded}" '
        f'style="width:100%;max-width:{int(max_width)}px;image-rendering:pixelated" '
        f'alt="{html.escape(alt, quote=True)}">'
    )
