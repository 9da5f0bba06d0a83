"""cxlib: the contextual loss (Mechrez, Talmi, Zelnik-Manor, ECCV 2018), exact and memory-lean.

The companion package of the Contextual Loss book.
"""

from .contextual import (
    ContextualLoss,
    ContextualMatrices,
    contextual_loss,
    contextual_matrices,
    contextual_similarity,
)
from .distances import DISTANCES

__version__ = "0.1.0"

__all__ = [
    "DISTANCES",
    "ContextualLoss",
    "ContextualMatrices",
    "contextual_loss",
    "contextual_matrices",
    "contextual_similarity",
]
