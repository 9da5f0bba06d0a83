"""The contextual loss itself: the public API and every step behind it.

- :mod:`.loss`: :func:`contextual_loss`, :func:`contextual_similarity`, :class:`ContextualLoss`.
- :mod:`.bilateral`: the contextual bilateral loss (CoBi).
- :mod:`.matrices`: every intermediate of one pair, for pictures and teaching.
- :mod:`.settings`: the hyper-parameters, checked; :mod:`.sampling`: feature maps as point sets,
  with the optional random subset of positions; :mod:`.distances`: centring and the distances.
- :mod:`.paths`: which path computes CX(X, Y): :mod:`.full` (whole matrices, the reference),
  :mod:`.blocked` (blocks of rows) or :mod:`.fused` (Triton kernels, loaded only when used),
  whose check on the device is :mod:`.fused_check`, whose offline compile report is
  :mod:`.fused_report` and whose work is counted by :mod:`.fused_cost`. What "auto" takes on a GPU comes from the stored benchmarks,
  :mod:`.measured`.
"""

from .bilateral import (ContextualBilateralLoss, contextual_bilateral_loss, position_grid,
                        spatial_similarity)
from .distances import DISTANCES
from .loss import ContextualLoss, contextual_loss, contextual_similarity
from .matrices import ContextualMatrices, contextual_matrices
from .settings import IMPLEMENTATIONS

__all__ = [
    "DISTANCES",
    "IMPLEMENTATIONS",
    "ContextualBilateralLoss",
    "ContextualLoss",
    "ContextualMatrices",
    "contextual_bilateral_loss",
    "contextual_loss",
    "contextual_matrices",
    "contextual_similarity",
    "position_grid",
    "spatial_similarity",
]
