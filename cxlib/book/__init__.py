"""What only the book's chapters use: the setting switch (fast or full), photographs and the
misalignments they are put through, measures for the figures, plotting, and the synthetic data
the training chapters learn from offline.

- :mod:`.setting`: :func:`book_setting`, :func:`glue`.
- :mod:`.images`: scikit-image's photographs, misalignments, noise.
- :mod:`.metrics`: PSNR, SSIM, edge correlation, colour distance; what a face translation
  transferred and kept.
- :mod:`.plot`: image rows and correspondence pictures (matplotlib).
- :mod:`.table`: tables that fit the page (HTML there, aligned text elsewhere).
- :mod:`.controls`: sliders that work on the published page (figures drawn in advance).
- :mod:`.explorer`: chapter 2's points to drag, computed in the page.
- :mod:`.synthetic`: a moving photograph, drawn faces.

Needs the ``book`` extra: ``pip install "cxlib[book] @ git+https://github.com/cx-book/contextual-loss-book@main"``.
"""

from .controls import PrecomputedControls, precomputed_controls
from .explorer import PointsExplorer, points_explorer
from .images import PHOTOGRAPHS, add_noise, load_image, misalign, misalignment_grid
from .metrics import (
    attribute_transferred,
    colour_distance,
    edge_correlation,
    head_centres,
    layout_kept,
    psnr,
    ssim,
)
from .plot import show_animation, show_correspondence, show_images
from .setting import book_setting, glue
from .synthetic import synthetic_faces, synthetic_video
from .table import Table

__all__ = [
    "PHOTOGRAPHS",
    "PointsExplorer",
    "PrecomputedControls",
    "Table",
    "add_noise",
    "attribute_transferred",
    "book_setting",
    "colour_distance",
    "edge_correlation",
    "glue",
    "head_centres",
    "layout_kept",
    "load_image",
    "misalign",
    "misalignment_grid",
    "points_explorer",
    "precomputed_controls",
    "psnr",
    "show_animation",
    "show_correspondence",
    "show_images",
    "ssim",
    "synthetic_faces",
    "synthetic_video",
]
