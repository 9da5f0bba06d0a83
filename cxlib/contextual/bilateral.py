r"""The contextual bilateral loss (CoBi; Zhang et al., "Zoom to Learn, Learn to Zoom", CVPR 2019).

CoBi mixes the contextual similarity of the features with that of the pixel coordinates:

.. math::

    \mathrm{CX}^{bi}_{ij} = (1 - w_{sp})\,\mathrm{CX}^{feat}_{ij} + w_{sp}\,\mathrm{CX}^{sp}_{ij},
    \qquad
    \mathcal{L}_{CoBi} = -\log \frac{1}{N}\sum_j \max_i \mathrm{CX}^{bi}_{ij},

where :math:`\mathrm{CX}^{sp}` is the contextual similarity (Eqs. 2-4) of the positions' coordinates,
normalised to [0, 1] in each map, under the squared Euclidean distance. This is the form of the
public Zoom-to-Learn code (``ceciliavision/zoom-learn-zoom``, ``CX/CSFlow.py``), which the paper
writes more loosely as a hard nearest neighbour, a mean over the target positions of the minimum
over the generated ones of :math:`D + w_s D'` (feature distance plus weighted spatial distance).
The mix is taken before the max over i, and computed with the same full or blocked paths as
:func:`cxlib.contextual_loss`.

The defaults are the published code's. Its Eq. 2 adds 1e-3 to the row minimum, for the features
and for the positions alike, and its feature distance is (1 - cos) / 2: with cxlib's 1 - cos that
is eps = 2e-3 (:data:`PUBLISHED_EPS`), and :data:`SPATIAL_EPS` = 1e-3 for the squared distances
of the coordinates. With that eps the spatial term is a soft locality prior: on a shared grid of
side s, two neighbouring positions are (1/s)^2 apart, so :math:`\mathrm{CX}^{sp}` spreads each
position's similarity over the positions within about :math:`s\sqrt{\epsilon_{sp}}` grid steps,
more of them the finer the grid. (With a tiny eps such as the contextual loss's 1e-5 it would
be the identity on a shared grid: the same position only.) Every column's maximum is at least
:math:`w_{sp}\,\mathrm{CX}^{sp}_{jj}`, so the loss never exceeds
:math:`-\log(w_{sp} \min_j \mathrm{CX}^{sp}_{jj})`, about :math:`-\log w_{sp}` on a coarse grid.
A large :math:`w_{sp}` therefore drowns the features; the published setting is
:math:`w_{sp} = 0.1`, h = 0.5.
"""
from __future__ import annotations

import torch
from torch import nn

from .._checks import (check_choice, check_generator, check_nonnegative, check_positive,
                       check_positive_int)
from .._reduction import REDUCTIONS, reduce_batch
from .distances import pairwise_distance, prepare_points
from .full import Term, similarity_matrix
from .paths import score_terms
from .loss import _result_dtype
from .sampling import outside_autocast, sampled_point_sets
from .settings import Settings, check_eps, check_settings

__all__ = [
    "PUBLISHED_EPS",
    "SPATIAL_EPS",
    "ContextualBilateralLoss",
    "contextual_bilateral_loss",
    "position_grid",
    "spatial_similarity",
]

#: The feature term's eps of Eq. 2 in the Zoom-to-Learn code, per distance: 1e-3 against its
#: (1 - cos) / 2, which is 2e-3 against cxlib's 1 - cos; 1e-3 against the l2 and l1 distances.
PUBLISHED_EPS = {"cosine": 2e-3, "l2": 1e-3, "l1": 1e-3}

#: The spatial term's eps of Eq. 2 in the Zoom-to-Learn code (squared distances of coordinates
#: in [0, 1]).
SPATIAL_EPS = 1e-3


def position_grid(height: int, width: int, *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """Coordinates of the pixel centres of an (height, width) map, in [0, 1]: CoBi's spatial
    features.

    Args:
        height: rows of the map.
        width: columns of the map.
        dtype: of the coordinates.
        device: of the coordinates.

    Shape:
        - Output: (H * W, 2), (row, col) in row-major order.

    Returns:
        The coordinates.

    Example:
        >>> import cxlib
        >>> cxlib.position_grid(1, 2)
        tensor([[0.5000, 0.2500],
                [0.5000, 0.7500]])
    """
    rows = (torch.arange(height, dtype=dtype, device=device) + 0.5) / height
    cols = (torch.arange(width, dtype=dtype, device=device) + 0.5) / width
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1)
    return grid.reshape(-1, 2)


def spatial_similarity(height: int, width: int, *, band_width: float = 0.5,
                       eps_sp: float = SPATIAL_EPS, dtype: torch.dtype = torch.float32,
                       device: torch.device | str | None = None) -> torch.Tensor:
    r"""CoBi's spatial term on a shared grid: :math:`\mathrm{CX}^{sp}_{ij}` of Eqs. 2-4 between
    the positions of an (height, width) map and themselves.

    Its diagonal says how much of each position's similarity stays at the same position: about 1
    when neighbouring positions are far apart in units of ``eps_sp`` (a coarse grid), less on a
    finer grid, where the term spreads over a neighbourhood. The CoBi loss on that grid is at most
    :math:`-\log(w_{sp} \min_j \mathrm{CX}^{sp}_{jj})`.

    Args:
        height: rows of the map.
        width: columns of the map.
        band_width: h > 0 of Eq. 3.
        eps_sp: epsilon >= 1e-12 of Eq. 2 for the positions.
        dtype: of the result.
        device: of the result.

    Shape:
        - Output: (H * W, H * W), rows and columns in row-major order; each row sums to 1.

    Returns:
        The spatial contextual similarity.

    Example:
        >>> import cxlib
        >>> from cxlib.contextual.bilateral import spatial_similarity
        >>> coarse, fine = spatial_similarity(6, 6), spatial_similarity(64, 64)
        >>> bool(coarse.diagonal().min() > 0.99), bool(fine.diagonal().max() < 0.5)
        (True, True)
    """
    band_width = check_positive("band_width", band_width)
    eps_sp = check_eps("eps_sp", eps_sp)
    grid = position_grid(check_positive_int("height", height), check_positive_int("width", width),
                         dtype=dtype, device=device)
    points = grid.unsqueeze(0)
    return similarity_matrix(pairwise_distance("l2", points, points), band_width, eps_sp)[0]


def _check_weight_sp(weight_sp: object) -> float:
    value = check_nonnegative("weight_sp", weight_sp)
    if value > 1:
        raise ValueError(f"weight_sp must be in [0, 1], got {weight_sp!r}")
    return value


def _feature_eps(eps: float | None, distance: object) -> object:
    """``eps``, or the published one for ``distance`` (an unknown distance is refused later)."""
    if eps is None and isinstance(distance, str):
        return PUBLISHED_EPS.get(distance, SPATIAL_EPS)
    return eps


def _bilateral_similarity(x: torch.Tensor, y: torch.Tensor, weight_sp: float, eps_sp: float,
                          settings: Settings, generator: torch.Generator | None) -> torch.Tensor:
    with outside_autocast(x):
        x_points, y_points, x_index, y_index = sampled_point_sets(x, y, settings, generator)
        x_points, y_points = prepare_points(settings.distance, x_points, y_points, settings.centring)
        batch = x_points.shape[0]
        x_grid = position_grid(x.shape[2], x.shape[3], dtype=x_points.dtype, device=x.device)
        y_grid = position_grid(y.shape[2], y.shape[3], dtype=y_points.dtype, device=y.device)
        if x_index is not None:
            x_grid = x_grid[x_index]
        if y_index is not None:
            y_grid = y_grid[y_index]
        x_grid, y_grid = (g.unsqueeze(0).expand(batch, -1, -1) for g in (x_grid, y_grid))
        terms = [Term(x_points, y_points, settings.distance, 1.0 - weight_sp)]
        if weight_sp > 0:
            terms.append(Term(x_grid, y_grid, "l2", weight_sp, eps=eps_sp))
        return score_terms(terms, settings)


def contextual_bilateral_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    weight_sp: float = 0.1,
    band_width: float = 0.5,
    eps: float | None = None,
    eps_sp: float = SPATIAL_EPS,
    distance: str = "cosine",
    reduction: str = "mean",
    implementation: str = "auto",
    block_size: int | None = None,
    sample_positions: int | None = None,
    generator: torch.Generator | None = None,
    check_finite: bool = True,
    centring: str = "sample",
) -> torch.Tensor:
    """Contextual bilateral loss (CoBi): the contextual loss with a spatial term mixed in.

    With ``weight_sp=0`` and the same ``eps`` it equals :func:`cxlib.contextual_loss`. The
    defaults are those of the published Zoom-to-Learn code (see :mod:`cxlib.contextual.bilateral`:
    eps 2e-3 for the cosine distance, 1e-3 for the positions). The paper on CoBi uses
    ``weight_sp=0.1``, h = 0.5, on VGG19 conv1_2, conv2_2 and conv3_2 (weights 1, 1, 0.5) plus
    an RGB term on 5x5 patches (:class:`cxlib.PatchFeatures`), which avoids the ripple artefacts of
    the VGG terms alone.

    Args:
        x: features of the generated image.
        y: features of the target image.
        weight_sp: weight in [0, 1] of the spatial term.
        band_width: h > 0 of Eq. 3, for both terms.
        eps: epsilon >= 1e-12 of Eq. 2 for the feature term; ``None``: the published one for
            ``distance`` (:data:`PUBLISHED_EPS`: 2e-3 for cosine, 1e-3 for l2 and l1).
        eps_sp: epsilon >= 1e-12 of Eq. 2 for the spatial term (:data:`SPATIAL_EPS` = 1e-3, the
            published one; 1e-5 makes it the identity on a shared grid).
        distance: distance between features: ``"cosine"``, ``"l2"`` or ``"l1"``.
        reduction: ``"mean"`` or ``"sum"`` over the batch, or ``"none"``.
        implementation: ``"auto"``, ``"full"`` or ``"blocked"`` (see :func:`cxlib.contextual_loss`).
        block_size: rows per block for the blocked path, or ``None``.
        sample_positions: keep at most this many random positions (and their coordinates).
        generator: CPU random generator for ``sample_positions`` (``None``: torch's global one).
        check_finite: refuse NaN and inf inputs (one device synchronisation per call); see
            :func:`cxlib.contextual_loss`.
        centring: ``"sample"`` (the paper) or ``"batch"`` (the authors' code), for the features.

    Shape:
        - x: (B, C, Hx, Wx); y: (B, C, Hy, Wy).
        - Output: a scalar, or (B,) with ``reduction="none"``.

    Returns:
        The loss, in the dtype of ``x``; float32 for float16/bfloat16 features.

    Example:
        >>> import torch, cxlib
        >>> y = torch.randn(1, 8, 6, 6)
        >>> float(cxlib.contextual_bilateral_loss(y, y)) < 1e-4
        True
    """
    settings = check_settings(band_width, _feature_eps(eps, distance), distance, implementation,
                              block_size, sample_positions, check_finite, centring)
    eps_sp = check_eps("eps_sp", eps_sp)
    weight_sp = _check_weight_sp(weight_sp)
    reduction = check_choice("reduction", reduction, REDUCTIONS)
    generator = check_generator("generator", generator)
    similarity = _bilateral_similarity(x, y, weight_sp, eps_sp, settings, generator)
    return reduce_batch(-torch.log(similarity), reduction).to(_result_dtype(x))


class ContextualBilateralLoss(nn.Module):
    """Module form of :func:`contextual_bilateral_loss`, keyword-only hyper-parameters.

    Args:
        weight_sp: weight in [0, 1] of the spatial term.
        band_width: h > 0 of Eq. 3.
        eps: epsilon >= 1e-12 of Eq. 2 for the features; ``None``: the published one.
        eps_sp: epsilon >= 1e-12 of Eq. 2 for the positions.
        distance: ``"cosine"``, ``"l2"`` or ``"l1"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        implementation: ``"auto"``, ``"full"`` or ``"blocked"``.
        block_size: rows per block for the blocked path, or ``None``.
        sample_positions: keep at most this many random positions, or ``None``.
        generator: CPU random generator for ``sample_positions``, kept and advanced at every
            call (``None``: torch's global one).
        check_finite: refuse NaN and inf inputs (one device synchronisation per call).
        centring: ``"sample"`` (the paper) or ``"batch"`` (the authors' code).

    Shape:
        - x: (B, C, Hx, Wx); y: (B, C, Hy, Wy).
        - Output: a scalar, or (B,) with ``reduction="none"``.

    Example:
        >>> import torch, cxlib
        >>> criterion = cxlib.ContextualBilateralLoss(weight_sp=0.1)
        >>> y = torch.randn(1, 8, 6, 6)
        >>> float(criterion(y, y)) < 1e-4
        True
    """

    def __init__(self, *, weight_sp: float = 0.1, band_width: float = 0.5,
                 eps: float | None = None, eps_sp: float = SPATIAL_EPS, distance: str = "cosine",
                 reduction: str = "mean", implementation: str = "auto",
                 block_size: int | None = None, sample_positions: int | None = None,
                 generator: torch.Generator | None = None, check_finite: bool = True,
                 centring: str = "sample") -> None:
        super().__init__()
        settings = check_settings(band_width, _feature_eps(eps, distance), distance,
                                  implementation, block_size, sample_positions, check_finite,
                                  centring)
        self.eps_sp = check_eps("eps_sp", eps_sp)
        self.weight_sp = _check_weight_sp(weight_sp)
        self.band_width, self.eps, self.distance = settings.band_width, settings.eps, settings.distance
        self.implementation, self.block_size = settings.implementation, settings.block_size
        self.sample_positions = settings.sample_positions
        self.reduction = check_choice("reduction", reduction, REDUCTIONS)
        self.generator = check_generator("generator", generator)
        self.check_finite = settings.check_finite
        self.centring = settings.centring

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return contextual_bilateral_loss(
            x, y, weight_sp=self.weight_sp, band_width=self.band_width, eps=self.eps,
            eps_sp=self.eps_sp, distance=self.distance, reduction=self.reduction,
            implementation=self.implementation,
            block_size=self.block_size, sample_positions=self.sample_positions,
            generator=self.generator, check_finite=self.check_finite, centring=self.centring,
        )

    def extra_repr(self) -> str:
        return (f"weight_sp={self.weight_sp}, band_width={self.band_width}, eps={self.eps}, "
                f"eps_sp={self.eps_sp}, distance={self.distance!r}, reduction={self.reduction!r}")
