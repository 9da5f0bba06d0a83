"""Steps 1 and 2 of the contextual loss: feature maps as point sets, and their pairwise distances.

A feature map of shape (B, C, H, W) is read as B sets of H*W points in R^C. Every distance here
first centres both sets by the target's mean feature mu_y, taken per sample as in the paper
(``centring="sample"``), or over the whole batch as the authors' TensorFlow code does
(``centring="batch"``, which couples the samples). For the cosine distance the
centring changes the result; the L2 and L1 distances are unchanged by it (both points move by the
same vector) and it only keeps their numbers small.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: A row of the l2 expansion is recomputed in float64 when its smallest entry is less than this
#: many times the expansion's rounding (see :func:`_squared_euclidean`): then Eq. 2's relative
#: distances, which divide by that smallest entry, would carry a rounding error above about
#: 1 / L2_REFINE_RATIO of their value.
L2_REFINE_RATIO = 1e5

__all__ = ["CENTRINGS", "DISTANCES", "L2_REFINE_RATIO", "as_point_sets", "pairwise_distance", "prepare_points"]

#: Names accepted by the ``distance=`` argument of the losses.
DISTANCES = ("cosine", "l2", "l1")
#: Names accepted by the ``centring=`` argument: the mean of each target (the paper) or of all
#: the batch's targets (the authors' code).
CENTRINGS = ("sample", "batch")


def as_point_sets(features: torch.Tensor) -> torch.Tensor:
    """Reshape a feature map (B, C, H, W) into point sets (B, H*W, C), position-major."""
    batch, channels = features.shape[:2]
    return features.reshape(batch, channels, -1).transpose(1, 2)


def prepare_points(
    distance: str, x_points: torch.Tensor, y_points: torch.Tensor, centring: str = "sample"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre both point sets by the mean of ``y_points``; for the cosine, also L2-normalise.

    Args:
        distance: one of :data:`DISTANCES`.
        x_points: generated points, (B, Nx, C).
        y_points: target points, (B, N, C).
        centring: ``"sample"``: each sample by its own target's mean (the paper); ``"batch"``:
            every sample by the mean of all the batch's target points (the authors' code).

    Returns:
        The two prepared point sets, ready for :func:`pairwise_distance`.
    """
    mu_y = y_points.mean(dim=(0, 1) if centring == "batch" else 1, keepdim=True)
    x_centred = x_points - mu_y
    y_centred = y_points - mu_y
    if distance == "cosine":
        # A point equal to mu_y has no direction: F.normalize maps it to 0, so its distance to
        # every other point is 1 (no NaN).
        return F.normalize(x_centred, dim=-1), F.normalize(y_centred, dim=-1)
    return x_centred, y_centred


def pairwise_distance(distance: str, x_points: torch.Tensor, y_points: torch.Tensor) -> torch.Tensor:
    r"""Distances d_ij between prepared points, (B, Nx, C) x (B, N, C) -> (B, Nx, N).

    - ``"cosine"``: :math:`1 - x_i \cdot y_j` on L2-normalised points, in [0, 2];
    - ``"l2"``: squared Euclidean distance :math:`\|x_i - y_j\|_2^2` (no square root, as the
      authors' code);
    - ``"l1"``: :math:`\sum_c |x_{ic} - y_{jc}|`, summed over the channels.
    """
    if distance == "cosine":
        return 1.0 - torch.bmm(x_points, y_points.transpose(1, 2))
    if distance == "l2":
        return _squared_euclidean(x_points, y_points)
    if distance == "l1":
        return torch.cdist(x_points, y_points, p=1.0)
    raise ValueError(f"distance must be one of {', '.join(map(repr, DISTANCES))}, got {distance!r}")


def _l2_expansion(x_points: torch.Tensor, y_points: torch.Tensor) -> torch.Tensor:
    """|x_i|^2 + |y_j|^2 - 2 x_i . y_j, (B, Nx, C) x (B, N, C) -> (B, Nx, N), unclamped."""
    x_sq = x_points.pow(2).sum(-1, keepdim=True)
    y_sq = y_points.pow(2).sum(-1).unsqueeze(1)
    return x_sq + y_sq - 2.0 * torch.bmm(x_points, y_points.transpose(1, 2))


def _squared_euclidean(x_points: torch.Tensor, y_points: torch.Tensor) -> torch.Tensor:
    """Squared distances by the matrix-product expansion, accurate where Eq. 2 needs it.

    The expansion's rounding is about unit * (|x_i|^2 + |y_j|^2) in every entry (unit: the
    dtype's machine epsilon), whatever the distance: near matches, where the true distance is
    below it, come out as rounding. Eq. 2 divides each row by its smallest entry, so in a row
    whose minimum is within ``L2_REFINE_RATIO`` times that rounding, the split between near
    targets would be decided by it. Those rows alone are recomputed with the expansion in
    float64 (as scikit-learn does for float32 Euclidean distances), and cast back; elsewhere the
    float32 expansion is already as accurate as the rest of the float32 computation.
    """
    dist = _l2_expansion(x_points, y_points)
    if dist.dtype == torch.float64 or dist.numel() == 0:
        return dist.clamp_min(0.0)  # the expansion can dip below 0 by rounding when x_i == y_j
    unit = torch.finfo(dist.dtype).eps
    with torch.no_grad():
        scale = x_points.pow(2).sum(-1) + y_points.pow(2).sum(-1).amax(-1, keepdim=True)
        suspect = dist.amin(-1) <= L2_REFINE_RATIO * unit * scale  # (B, Nx)
    if not bool(suspect.any()):
        return dist.clamp_min(0.0)
    batch_index, row_index = suspect.nonzero(as_tuple=True)
    rows = []
    for b in range(dist.shape[0]):  # one product per sample: y is not copied per row
        picked = row_index[batch_index == b]
        if picked.numel():
            exact = _l2_expansion(x_points[b, picked].double().unsqueeze(0),
                                  y_points[b].double().unsqueeze(0))[0]
            rows.append(exact.to(dist.dtype))
    dist = dist.index_put((batch_index, row_index), torch.cat(rows))
    return dist.clamp_min(0.0)
