"""The command line that trains a CRN for one of the paper's applications, on one GPU or
several under torchrun::

    python -m cxlib.training animation --video clip.mp4 --target look.jpg --run-dir runs/anim
    torchrun --standalone --nproc_per_node=4 -m cxlib.training domain --celeba data/celeba \\
        --attribute Male --run-dir runs/m2f

An existing ``--run-dir`` resumes from its checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from ..crn import CRN, crn_config
from .data import CelebAAttribute, StackedImages, StepBatches, VideoFrames, edge_map, read_image_file
from .loop import train, training_device
from .objectives import AnimationObjective, DomainTransferObjective, PuppetObjective

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cxlib.training",
                                     description="Train a CRN for one of the paper's applications.")
    sub = parser.add_subparsers(dest="task", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--run-dir", required=True, help="checkpoint and samples go here; an existing run resumes")
        p.add_argument("--size", type=int, default=256, help="output side (power of two); default %(default)s")
        p.add_argument("--steps", type=int, default=100_000)
        p.add_argument("--batch-size", type=int, default=1)
        p.add_argument("--lr", type=float, default=1e-4)
        p.add_argument("--checkpoint-every", type=int, default=500)
        p.add_argument("--sample-every", type=int, default=500)
        p.add_argument("--amp", action="store_true", help="mixed precision")
        p.add_argument("--weights", default="imagenet", help="'imagenet', 'random' or a state dict path")

    animation = sub.add_parser("animation", help="single-image animation")
    animation.add_argument("--video", required=True, help="the video whose frames give the poses")
    animation.add_argument("--target", required=True, help="the image whose look the output takes")
    animation.add_argument("--baseline", action="store_true", help="train L_Gram^t + L_P^s instead")
    common(animation)
    puppet = sub.add_parser("puppet", help="puppet control from (drawing, frame) pairs")
    puppet.add_argument("--video", required=True, help="the puppet's video; drawings are its edge maps")
    puppet.add_argument("--baseline", action="store_true", help="train L_1^t + L_P^t instead")
    common(puppet)
    domain = sub.add_parser("domain", help="unpaired domain transfer on CelebA")
    domain.add_argument("--celeba", required=True, help="the CelebA folder")
    domain.add_argument("--attribute", default="Male")
    domain.add_argument("--from-present", action="store_true",
                        help="translate faces WITH the attribute into faces without it (default: the reverse)")
    common(domain)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, build the data, the CRN and the objective, and train.

    Args:
        argv: the arguments (``None``: ``sys.argv[1:]``).

    Returns:
        The exit status, 0.

    Example:
        >>> from cxlib.training.cli import main
        >>> main(["--help"])  # doctest: +SKIP
    """
    args = _parser().parse_args(argv)
    weights = None if args.weights == "random" else args.weights
    in_channels = 1 if args.task == "puppet" else 3
    model = CRN(crn_config(args.size), in_channels=in_channels)
    if args.task == "animation":
        frames = VideoFrames(args.video, args.size)
        target = read_image_file(args.target, args.size)[None]
        objective: torch.nn.Module = AnimationObjective(target, kind="gram" if args.baseline else "contextual", weights=weights)
        sources = StepBatches(frames, args.batch_size)

        def batch(step):
            return {"source": sources(step)}
        samples = frames.images[:: max(1, len(frames) // 8)][:8]
    elif args.task == "puppet":
        frames = VideoFrames(args.video, args.size)
        drawings = StackedImages(edge_map(frames.images))
        objective = PuppetObjective(kind="l1" if args.baseline else "contextual", weights=weights)
        pairs = StepBatches(StackedImages(torch.cat([drawings.images, frames.images], 1)), args.batch_size)

        def batch(step):
            both = pairs(step)
            return {"source": both[:, :1], "target": both[:, 1:]}
        samples = drawings.images[:: max(1, len(drawings) // 8)][:8]
    else:
        source_set = CelebAAttribute(args.celeba, attribute=args.attribute, present=args.from_present, size=args.size)
        target_set = CelebAAttribute(args.celeba, attribute=args.attribute, present=not args.from_present, size=args.size)
        objective = DomainTransferObjective(weights=weights)
        sources, targets = StepBatches(source_set, args.batch_size, seed=0), StepBatches(target_set, args.batch_size, seed=1)

        def batch(step):
            return {"source": sources(step), "target": targets(step)}
        samples = torch.stack([source_set[i] for i in range(8)])
    # The local rank's GPU under torchrun: the objective (VGG19, targets) must live where the
    # model trains.
    device = training_device(None)
    objective.to(device)
    result = train(model, objective, batch, steps=args.steps, run_dir=args.run_dir, lr=args.lr,
                   sample_inputs=samples, sample_every=args.sample_every,
                   checkpoint_every=args.checkpoint_every, amp=args.amp, device=device,
                   description=f"{args.task} (CRN {args.size})")
    if not result.history:
        return 0
    print(f"step {result.step}: loss {result.history[-1]['loss']:.4f}; "
          f"checkpoint in {args.run_dir}", file=sys.stderr)
    return 0
