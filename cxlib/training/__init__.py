"""Training networks with the contextual loss: the loop and its checkpoints, datasets, the
paper's applications' objectives, and their command line (``python -m cxlib.training``).

- :mod:`.loop`: :func:`train` (resumable, AMP, DDP under torchrun), :func:`measure_step_time`.
- :mod:`.checkpoint`: atomic checkpoints and how to read them.
- :mod:`.data`: image folders, video frames, CelebA by attribute, per-step batches.
- :mod:`.objectives`: the losses of the animation, puppet and domain-transfer applications.
- :mod:`.cyclegan`: CycleGAN, the method the paper compares unpaired domain transfer with.
- :mod:`.cli`: the command line.

Reading image files and videos needs imageio, which the ``train`` extra installs
(``pip install "cxlib[train] @ git+https://github.com/cx-book/contextual-loss-book@main"``).
"""

from .checkpoint import CHECKPOINT_NAME, checkpoint_step, load_checkpoint
from .cyclegan import CycleGAN, CycleGANObjective, ImagePool, PatchDiscriminator, ResnetGenerator
from .data import (
    CelebAAttribute,
    ImageFolder,
    StackedImages,
    StepBatches,
    VideoFrames,
    edge_map,
    read_image_file,
    write_video,
)
from .loop import TrainResult, measure_step_time, train, training_device
from .objectives import AnimationObjective, DomainTransferObjective, PuppetObjective

__all__ = [
    "CHECKPOINT_NAME",
    "AnimationObjective",
    "CelebAAttribute",
    "CycleGAN",
    "CycleGANObjective",
    "DomainTransferObjective",
    "ImageFolder",
    "ImagePool",
    "PatchDiscriminator",
    "PuppetObjective",
    "ResnetGenerator",
    "StackedImages",
    "StepBatches",
    "TrainResult",
    "VideoFrames",
    "checkpoint_step",
    "edge_map",
    "load_checkpoint",
    "measure_step_time",
    "read_image_file",
    "train",
    "training_device",
    "write_video",
]
