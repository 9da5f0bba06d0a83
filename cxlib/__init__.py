"""cxlib: the contextual loss (Mechrez, Talmi, Zelnik-Manor, ECCV 2018), exact and memory-lean.

The companion package of the Contextual Loss book: the contextual loss and its bilateral
variant, VGG19 features by layer name, raw patch features, and the losses the paper compares
against.
"""

from .apps import AnimationObjective, DomainTransferObjective, PuppetObjective
from .bilateral import ContextualBilateralLoss, contextual_bilateral_loss, position_grid
from .contextual import (
    ContextualLoss,
    ContextualMatrices,
    contextual_loss,
    contextual_matrices,
    contextual_similarity,
)
from .crn import CRN, CRN_256, crn_config
from .data import (
    CelebAAttribute,
    ImageFolder,
    StackedImages,
    VideoFrames,
    edge_map,
    synthetic_faces,
    synthetic_video,
    write_video,
)
from .distances import DISTANCES
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
from .train import (
    StepBatches,
    TrainResult,
    checkpoint_step,
    load_checkpoint,
    measure_step_time,
    train,
    training_device,
)
from .vgg_losses import GramLoss, PerceptualLoss, VGGContextualLoss

__version__ = "0.1.0"

__all__ = [
    "CRN",
    "CRN_256",
    "DISTANCES",
    "VGG19_LAYERS",
    "AnimationObjective",
    "CelebAAttribute",
    "ContextualBilateralLoss",
    "ContextualLoss",
    "ContextualMatrices",
    "DomainTransferObjective",
    "GramLoss",
    "ImageFolder",
    "L1Loss",
    "L2Loss",
    "OptimizationResult",
    "PatchFeatures",
    "PerceptualLoss",
    "PuppetObjective",
    "RandomWeightsWarning",
    "StackedImages",
    "StepBatches",
    "TotalVariation",
    "TrainResult",
    "VGG19Features",
    "VGGContextualLoss",
    "VideoFrames",
    "WeightsUnavailableError",
    "contextual_bilateral_loss",
    "contextual_loss",
    "contextual_matrices",
    "contextual_similarity",
    "checkpoint_step",
    "concat_layers",
    "crn_config",
    "edge_map",
    "gram_loss",
    "gram_matrix",
    "l1_loss",
    "l2_loss",
    "load_checkpoint",
    "measure_step_time",
    "mrf_loss",
    "optimize_image",
    "patch_features",
    "perceptual_loss",
    "position_grid",
    "synthetic_faces",
    "synthetic_video",
    "total_variation",
    "train",
    "training_device",
    "write_video",
]
