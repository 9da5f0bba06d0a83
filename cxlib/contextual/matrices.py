"""Every intermediate of the contextual similarity of one pair, for pictures and for teaching."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_feature_pair
from .distances import as_point_sets, pairwise_distance, prepare_points
from .precision import in_computation_dtype
from .full import relative_distance, similarity_logits
from .sampling import outside_autocast
from .settings import Settings, check_settings

__all__ = ["ContextualMatrices", "contextual_matrices"]


@dataclass(frozen=True)
class ContextualMatrices:
    """Every intermediate of the contextual similarity of one pair of feature maps.

    Rows are the Nx generated positions i, columns the N target positions j, both in
    row-major (H, W) order.

    Attributes:
        mu_y: the target's mean feature, (C,).
        x_points: generated points after centring (and, for the cosine, L2 normalisation), (Nx, C).
        y_points: target points, prepared the same way, (N, C).
        distance: d_ij, (Nx, N).
        relative_distance: d~_ij of Eq. 2, (Nx, N).
        weights: w_ij of Eq. 3, (Nx, N); may overflow to inf for h < 1/88 in float32 (the
            similarity below never does).
        similarity: CX_ij of Eq. 4, (Nx, N); each row sums to 1.
        best_match: for each target position j, the generated position i of largest CX_ij, (N,).
        best_similarity: max_i CX_ij for each j, (N,).
        score: CX(X, Y), a 0-D tensor.
        loss: -log CX(X, Y), a 0-D tensor.
    """

    mu_y: torch.Tensor
    x_points: torch.Tensor
    y_points: torch.Tensor
    distance: torch.Tensor
    relative_distance: torch.Tensor
    weights: torch.Tensor
    similarity: torch.Tensor
    best_match: torch.Tensor
    best_similarity: torch.Tensor
    score: torch.Tensor
    loss: torch.Tensor


def contextual_matrices(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    band_width: float = 0.5,
    eps: float = 1e-5,
    distance: str = "cosine",
) -> ContextualMatrices:
    """Every intermediate of steps 1-6 for one sample, for pictures and for teaching.

    Holds full (Nx, N) matrices: meant for small maps.

    Args:
        x: generated features, (C, Hx, Wx) or (1, C, Hx, Wx).
        y: target features, (C, Hy, Wy) or (1, C, Hy, Wy).
        band_width: h > 0 of Eq. 3.
        eps: epsilon >= 1e-12 of Eq. 2.
        distance: ``"cosine"``, ``"l2"`` or ``"l1"``.

    Shape:
        - x: (C, Hx, Wx) or (1, C, Hx, Wx); y: (C, Hy, Wy) or (1, C, Hy, Wy).
        - Output: matrices (Nx, N) with Nx = Hx * Wx and N = Hy * Wy (see
          :class:`ContextualMatrices`).

    Returns:
        A :class:`ContextualMatrices`; its ``score`` equals :func:`cxlib.contextual_similarity`.

    Example:
        >>> import torch, cxlib
        >>> y = torch.randn(4, 3, 3)
        >>> m = cxlib.contextual_matrices(y, y)
        >>> m.best_match.tolist()
        [0, 1, 2, 3, 4, 5, 6, 7, 8]
    """
    settings = check_settings(band_width, eps, distance, "full", None, None)
    x, y = (t.unsqueeze(0) if isinstance(t, torch.Tensor) and t.dim() == 3 else t for t in (x, y))
    x, y = check_feature_pair(x, y)
    if x.shape[0] != 1:
        raise ValueError(
            f"contextual_matrices takes one sample: expected (C, H, W) or (1, C, H, W), "
            f"got x {tuple(x.shape)}"
        )
    x, y = in_computation_dtype(x, y)  # as the loss: Eq. 2 needs float32
    with outside_autocast(x):
        return _matrices(x, y, settings)


def _matrices(x: torch.Tensor, y: torch.Tensor, settings: Settings) -> ContextualMatrices:
    x_raw, y_raw = as_point_sets(x), as_point_sets(y)
    x_points, y_points = prepare_points(settings.distance, x_raw, y_raw)
    dist = pairwise_distance(settings.distance, x_points, y_points)[0]
    relative = relative_distance(dist, settings.eps)
    logits = similarity_logits(relative, settings.band_width)
    similarity = torch.softmax(logits, dim=-1)
    best_similarity, best_match = similarity.max(dim=0)
    score = best_similarity.mean()
    return ContextualMatrices(
        mu_y=y_raw[0].mean(dim=0),
        x_points=x_points[0],
        y_points=y_points[0],
        distance=dist,
        relative_distance=relative,
        weights=torch.exp(logits),
        similarity=similarity,
        best_match=best_match,
        best_similarity=best_similarity,
        score=score,
        loss=-torch.log(score),
    )
