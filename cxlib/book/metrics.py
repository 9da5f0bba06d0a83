"""Measures for the book's figures and tables: PSNR and SSIM (scikit-image's, the numbers other
papers report), and two measures of what a trained network kept: the layout (edge correlation)
and the colours (a sliced Wasserstein distance between palettes)."""

from __future__ import annotations

import numpy as np
import torch

from .._checks import check_tensor
from .._optional import require
from ..training.data import edge_map

__all__ = ["attribute_transferred", "colour_distance", "edge_correlation", "head_centres", "layout_kept",
           "psnr", "ssim"]


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
    r"""Peak signal-to-noise ratio in dB of images in [0, 1] against a reference, per sample.

    scikit-image's ``peak_signal_noise_ratio`` with ``data_range=1``, so the numbers are the ones
    other papers report: :math:`10 \log_{10}(1 / \mathrm{MSE})`, infinite for equal images. For
    figures and tables: not differentiable (the images go to the CPU).

    Args:
        images: the images to measure, in [0, 1].
        reference: the reference (ground truth), one image or one per image.

    Shape:
        - images: (B, C, H, W); reference: (B, C, H, W) or (1, C, H, W).
        - Output: (B,).

    Returns:
        PSNR per sample, float64, on the CPU.

    Example:
        >>> import torch
        >>> from cxlib.book import psnr
        >>> round(psnr(torch.full((1, 3, 8, 8), 0.1), torch.zeros(1, 3, 8, 8)).item(), 3)
        20.0
    """
    peak_signal_noise_ratio = require("skimage.metrics", extra="book", purpose="psnr").peak_signal_noise_ratio

    with np.errstate(divide="ignore"):  # equal images: inf, as scikit-image says
        values = [peak_signal_noise_ratio(b, a, data_range=1.0) for a, b in _image_pairs(images, reference)]
    return torch.tensor(values, dtype=torch.float64)


def ssim(images: torch.Tensor, reference: torch.Tensor, *, window: int = 7) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) of images in [0, 1] against a reference, per sample.

    scikit-image's ``structural_similarity`` with ``data_range=1`` and its defaults: uniform
    ``window`` x ``window`` windows, K1 = 0.01, K2 = 0.03, sample covariances, the mean over the
    channels and the positions where the window fits. For figures and tables: not differentiable
    (the images go to the CPU).

    Args:
        images: the images to measure, in [0, 1].
        reference: the reference (ground truth), one image or one per image.
        window: side of the square windows (odd, at most H and W).

    Shape:
        - images: (B, C, H, W); reference: (B, C, H, W) or (1, C, H, W).
        - Output: (B,).

    Returns:
        SSIM per sample, in [-1, 1], float64, on the CPU.

    Example:
        >>> import torch
        >>> from cxlib.book import ssim
        >>> x = torch.rand(1, 3, 16, 16)
        >>> ssim(x, x)
        tensor([1.], dtype=torch.float64)
    """
    structural_similarity = require("skimage.metrics", extra="book", purpose="ssim").structural_similarity

    values = [structural_similarity(b, a, data_range=1.0, channel_axis=-1, win_size=window)
              for a, b in _image_pairs(images, reference)]
    return torch.tensor(values, dtype=torch.float64)


def edge_correlation(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of the edge maps (:func:`cxlib.training.edge_map`) of two image batches,
    per sample: 1 when the edges are in the same places, about 0 when unrelated. Measures whether
    an output kept the layout of its input, whatever their colours.

    Args:
        images: RGB images.
        reference: RGB images to compare with, one per image.

    Shape:
        - images, reference: (B, 3, H, W).
        - Output: (B,).

    Returns:
        The correlation per sample, in [-1, 1].

    Example:
        >>> import torch
        >>> from cxlib.book import edge_correlation
        >>> x = torch.zeros(1, 3, 8, 8); x[..., 4:] = 1.0
        >>> round(edge_correlation(x, 1.0 - x).item(), 6)  # the same edges in other colours
        1.0
    """
    a = edge_map(images).flatten(1)
    b = edge_map(reference).flatten(1)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)


def colour_distance(images: torch.Tensor, reference: torch.Tensor, *, projections: int = 64,
                    seed: int = 0) -> torch.Tensor:
    """How far the colours of images are from the colours of a reference, per sample: the sliced
    Wasserstein-1 distance between their sets of RGB pixels, averaged over ``projections`` random
    directions. 0 for the same palette in any arrangement.

    Args:
        images: RGB images in [0, 1].
        reference: the reference's RGB images, one per image or one for all; sizes may differ
            (the pixel sets are compared through their quantiles).
        projections: number of random directions.
        seed: seed of the directions.

    Shape:
        - images: (B, 3, H, W); reference: (B, 3, H', W') or (1, 3, H', W').
        - Output: (B,).

    Returns:
        The distance per sample, >= 0.

    Example:
        >>> import torch
        >>> from cxlib.book import colour_distance
        >>> x = torch.rand(1, 3, 8, 8)
        >>> colour_distance(x.flip(-1), x).item()  # the same pixels, moved
        0.0
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


def attribute_transferred(outputs: torch.Tensor, sources: torch.Tensor, truths: torch.Tensor, *,
                          threshold: float = 0.05) -> torch.Tensor:
    """How far a translation moved each image towards a known right answer, where it should
    change: inside the region where the truth differs from the source, the mean fraction of
    the way from the source's colour to the truth's (0 = unchanged, 1 = the truth's colour),
    each pixel's fraction clipped to [-1, 2].

    For the synthetic faces of the domain-transfer chapter, whose truth is the same face drawn
    with the other domain's attribute.

    Args:
        outputs: the translated images.
        sources: the images that were translated.
        truths: the right answers, one per source.
        threshold: how much (sum over RGB of the absolute difference) a truth pixel must differ
            from its source pixel to count as part of the attribute.

    Shape:
        - outputs, sources, truths: (B, 3, H, W).
        - Output: (B,).

    Returns:
        The fraction per sample (NaN where truth and source do not differ).

    Example:
        >>> import torch
        >>> from cxlib.book import attribute_transferred
        >>> source, truth = torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
        >>> truth[..., :2, :] = 1.0
        >>> attribute_transferred((source + truth) / 2, source, truth).item()
        0.5
    """
    outputs, sources, truths = (check_tensor(n, v, ndim=4) for n, v in
                                (("outputs", outputs), ("sources", sources), ("truths", truths)))
    if not outputs.shape == sources.shape == truths.shape:
        raise ValueError("outputs, sources and truths must have the same shape, got "
                         f"{tuple(outputs.shape)}, {tuple(sources.shape)} and {tuple(truths.shape)}")
    change = truths - sources
    region = change.abs().sum(1) > threshold
    moved = ((outputs - sources) * change).sum(1) / change.square().sum(1).clamp_min(1e-12)
    moved = torch.where(region, moved.clamp(-1, 2), torch.zeros_like(moved))
    return moved.sum((1, 2)) / region.sum((1, 2))


def head_centres(images: torch.Tensor, *, threshold: float = 0.1) -> torch.Tensor:
    """The centre (row, column) of what differs from the background in each image: for the
    drawn faces, where the head is. The background's colour is the median of the top and bottom
    rows.

    Args:
        images: RGB images on a plain background.
        threshold: how far (Euclidean, in RGB) a pixel must be from the background's colour.

    Shape:
        - images: (B, 3, H, W).
        - Output: (B, 2).

    Returns:
        The centres in pixels (float64; NaN for an image with nothing on its background).

    Example:
        >>> import torch
        >>> from cxlib.book import head_centres
        >>> x = torch.zeros(1, 3, 8, 8); x[..., 2:4, 4:8] = 1.0
        >>> head_centres(x).tolist()
        [[2.5, 5.5]]
    """
    images = check_tensor("images", images, ndim=4)
    edges = torch.cat([images[..., 0, :], images[..., -1, :]], -1)
    border = edges.median(-1).values
    images = images.double()  # sums of pixel indices overflow half precision
    mask = ((images - border.double()[..., None, None]).norm(dim=1) > threshold).double()
    rows = torch.arange(images.shape[2], dtype=torch.float64, device=images.device)
    cols = torch.arange(images.shape[3], dtype=torch.float64, device=images.device)
    area = mask.sum((1, 2))
    centres = torch.stack([(mask * rows[:, None]).sum((1, 2)) / area,
                           (mask * cols[None, :]).sum((1, 2)) / area], 1)
    return torch.where(area[:, None] > 0, centres, torch.full_like(centres, float("nan")))


def layout_kept(outputs: torch.Tensor, truths: torch.Tensor) -> tuple[float, float]:
    """Whether each output kept its own input's layout: the mean distance (pixels) from each
    output's head centre to its own truth's, and to the other truths' (all other pairs).

    A network that ignores its input (one typical face for all) is about as far from its own
    truth as from the others; one that keeps the layout is much nearer its own.

    Args:
        outputs: the translated images.
        truths: the right answers, one per output (at least two).

    Shape:
        - outputs, truths: (B, 3, H, W), B >= 2.

    Returns:
        (own, other): the two mean distances in pixels.

    Example:
        >>> import torch
        >>> from cxlib.book import layout_kept
        >>> x = torch.zeros(2, 3, 8, 8); x[0, :, 1:3, 1:3] = 1.0; x[1, :, 5:7, 5:7] = 1.0
        >>> own, other = layout_kept(x, x)
        >>> own, round(other, 3)
        (0.0, 5.657)
    """
    outputs = check_tensor("outputs", outputs, ndim=4)
    truths = check_tensor("truths", truths, ndim=4)
    if outputs.shape != truths.shape or outputs.shape[0] < 2:
        raise ValueError("outputs and truths must have the same shape with at least two images, "
                         f"got {tuple(outputs.shape)} and {tuple(truths.shape)}")
    distances = torch.cdist(head_centres(outputs).double(), head_centres(truths).double())
    count = distances.shape[0]
    own = distances.diagonal().mean().item()
    other = ((distances.sum() - distances.diagonal().sum()) / (count * (count - 1))).item()
    return own, other
