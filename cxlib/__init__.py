"""cxlib: the contextual loss (Mechrez, Talmi, Zelnik-Manor, ECCV 2018), exact and memory-lean.

The top level holds what one uses in one's own training: the contextual loss and its bilateral
variant (:mod:`cxlib.contextual`), VGG19 features by layer name and raw patch features
(:mod:`cxlib.vgg`, :mod:`cxlib.patches`), the losses the paper compares against
(:mod:`cxlib.losses`, :mod:`cxlib.mrf`, :mod:`cxlib.vgg_losses`), image optimisation
(:mod:`cxlib.optimize`) and the paper's network (:mod:`cxlib.crn`).

Two parts load only when first used: :mod:`cxlib.training` (the training loop, datasets, the
applications' objectives and their command line) and :mod:`cxlib.book` (what only the book's
chapters use). Neither is imported by ``import cxlib``, nor is Triton (the fused kernels load on
first use).
"""

import importlib

from .contextual import (
    DISTANCES,
    ContextualBilateralLoss,
    ContextualLoss,
    ContextualMatrices,
    contextual_bilateral_loss,
    contextual_loss,
    contextual_matrices,
    contextual_similarity,
    position_grid,
)
from .crn import CRN, CRN_256, crn_config
from .losses import (
    L1Loss,
    L2Loss,
    TotalVariation,
    gram_loss,
    gram_matrix,
    l1_loss,
    l2_loss,
    perceptual_loss,
    total_variation,
)
from .mrf import mrf_loss
from .optimize import OptimizationResult, optimize_image
from .patches import PatchFeatures, patch_features
from .vgg import (
    VGG19_LAYERS,
    RandomWeightsWarning,
    VGG19Features,
    WeightsUnavailableError,
    concat_layers,
)
from .vgg_losses import GramLoss, PerceptualLoss, VGGContextualLoss

#: cxlib's version, its one source (the build reads it): semantic versioning, see CHANGELOG.md.
__version__ = "0.1.0"

__all__ = [
    "CRN",
    "CRN_256",
    "DISTANCES",
    "VGG19_LAYERS",
    "ContextualBilateralLoss",
    "ContextualLoss",
    "ContextualMatrices",
    "GramLoss",
    "L1Loss",
    "L2Loss",
    "OptimizationResult",
    "PatchFeatures",
    "PerceptualLoss",
    "RandomWeightsWarning",
    "TotalVariation",
    "VGG19Features",
    "VGGContextualLoss",
    "WeightsUnavailableError",
    "concat_layers",
    "contextual_bilateral_loss",
    "contextual_loss",
    "contextual_matrices",
    "contextual_similarity",
    "crn_config",
    "gram_loss",
    "gram_matrix",
    "l1_loss",
    "l2_loss",
    "mrf_loss",
    "optimize_image",
    "patch_features",
    "perceptual_loss",
    "position_grid",
    "total_variation",
]

# Subpackages and tools that ``cxlib.<name>`` loads on first use (PEP 562).
_LAZY = ("book", "training", "benchmark", "gpu_check")


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'cxlib' has no attribute {name!r}")
