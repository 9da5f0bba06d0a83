"""The paper's trained applications (Table 1): the loss of each, and a command line to train them.

Each objective is a module called as ``objective(model, batch)`` by :func:`cxlib.train`; it
returns the loss and its terms for the log.

- :class:`AnimationObjective`: single-image animation. A CRN trained on the frames s of a video
  keeps each frame's pose and takes the look of one target image t:
  L_CX^t(G(s), t) [conv3_2, conv4_2] + L_CX^s(G(s), s) [conv4_2], h = 0.5; or the baseline
  L_Gram^t + L_P^s.
- :class:`PuppetObjective`: puppet control, paired but not aligned data (a drawing s of each
  frame, the frame t): L_CX^t + L_P^t, or the baseline L_1^t + L_P^t.
- :class:`DomainTransferObjective`: unpaired domain transfer, each source image s paired with a
  random image t of the other domain: L_CX^t [conv3_2, conv4_2] + L_CX^s [conv4_2], h = 0.5.

Baseline terms whose raw scales differ by orders of magnitude (Gram, perceptual, L1) are each
divided by a fixed scale, so that they weigh equally. The scales are measured once, on the first
batch, before the first step: :func:`cxlib.train` calls the objective's ``calibrate``, stores the
values in the checkpoint (a resumed run keeps them) and broadcasts rank 0's to every rank (all
ranks optimise the same objective). Pass ``scales=`` to fix them yourself.

Command line (one GPU or several under torchrun)::

    python -m cxlib.apps animation --video clip.mp4 --target look.jpg --run-dir runs/anim
    torchrun --standalone --nproc_per_node=4 -m cxlib.apps domain --celeba data/celeba \\
        --source-attribute Male --run-dir runs/m2f
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ._checks import check_choice
from .losses import gram_loss, l1_loss, perceptual_loss
from .vgg import VGG19Features
from .vgg_losses import VGGContextualLoss

__all__ = ["AnimationObjective", "DomainTransferObjective", "PuppetObjective", "main"]


def _as_float_logs(terms: Mapping[str, torch.Tensor]) -> dict[str, float]:
    return {name: float(value.detach()) for name, value in terms.items()}


def _check_scales(scales: object) -> tuple[float, float]:
    if not isinstance(scales, (tuple, list)) or len(scales) != 2:
        raise TypeError(f"scales must be a pair of positive numbers, got {scales!r}")
    values = tuple(float(v) for v in scales)
    if not all(v > 0 and v < float("inf") for v in values):
        raise ValueError(f"scales must be positive and finite, got {values}")
    return values


class _ScaledObjective(nn.Module):
    """An objective whose terms are divided by two scales measured once, before training.

    The calibration protocol of :func:`cxlib.train`: ``calibrated``, ``calibrate(model, batch)``,
    ``calibration_state()`` and ``load_calibration_state(state)``.
    """

    def __init__(self, scales: tuple[float, float] | None, *, needs_scales: bool) -> None:
        super().__init__()
        self._needs_scales = needs_scales
        self.scales = None if scales is None else _check_scales(scales)

    @property
    def calibrated(self) -> bool:
        """Whether the objective can be evaluated (its scales are known or not needed)."""
        return not self._needs_scales or self.scales is not None

    def measure_scales(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[float, float]:
        raise NotImplementedError

    def calibrate(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> None:
        """Measure the scales on ``batch`` (``train`` does this before the first step)."""
        if self._needs_scales:
            self.scales = _check_scales(self.measure_scales(model, batch))

    def calibration_state(self) -> dict[str, torch.Tensor]:
        """The measured values, for the checkpoint."""
        return {} if self.scales is None else {"scales": torch.tensor(self.scales, dtype=torch.float64)}

    def load_calibration_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Take the values of a checkpoint (or of rank 0)."""
        if "scales" in state:
            self.scales = _check_scales(state["scales"].tolist())

    def _known_scales(self) -> tuple[float, float]:
        if self.scales is None:
            raise RuntimeError(
                f"{type(self).__name__}: the scales of the baseline's terms are not measured yet; "
                "cxlib.train measures them before the first step, or call "
                "objective.calibrate(model, first_batch), or pass scales=(..., ...)"
            )
        return self.scales


class AnimationObjective(_ScaledObjective):
    """Single-image animation: output keeps the frame's pose and takes the target's look.

    Args:
        target: the single target image (1, 3, H, W) in [0, 1].
        kind: ``"contextual"`` (the paper) or ``"gram"`` (the baseline L_Gram^t + L_P^s).
        weights: VGG19 weights (see :class:`cxlib.VGG19Features`).
        band_width: h of the contextual terms.
        scales: for ``"gram"``, the (Gram, perceptual) values each term is divided by; if
            ``None``, measured on the first batch by :meth:`calibrate` (which :func:`cxlib.train`
            calls before the first step).

    The batch holds ``"source"``: frames (B, 3, H, W).
    """

    GRAM_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")

    def __init__(self, target: torch.Tensor, *, kind: str = "contextual", weights="imagenet",
                 band_width: float = 0.5, scales: tuple[float, float] | None = None) -> None:
        kind = check_choice("kind", kind, ("contextual", "gram"))
        super().__init__(scales, needs_scales=kind == "gram")
        self.kind = kind
        if self.kind == "contextual":
            self.loss = VGGContextualLoss({"conv3_2": 1.0, "conv4_2": 1.0}, {"conv4_2": 1.0},
                                          band_width=band_width, weights=weights)
            self.loss.fix_target(target)
            self.vgg = self.loss.vgg
        else:
            self.vgg = VGG19Features([*self.GRAM_LAYERS, "conv4_2"], weights=weights)
            with torch.no_grad():
                for name, value in self.vgg(target).items():
                    self.register_buffer(f"target_{name}", value.detach(), persistent=False)
        self.register_buffer("target", target, persistent=False)

    def _target_features(self, name: str) -> torch.Tensor:
        return getattr(self, f"target_{name}")

    def measure_scales(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[float, float]:
        """The baseline's term values between the batch's sources and the target (Gram) and
        between the sources and the target resized to them (perceptual): what each term is
        divided by. Depends on the data only, not on the model."""
        sources = batch["source"]
        with torch.no_grad():
            fs = self.vgg(sources)
            gram = sum(gram_loss(fs[l], self._target_features(l).expand(len(sources), -1, -1, -1))
                       for l in self.GRAM_LAYERS)
            target = torch.nn.functional.interpolate(self.target, size=sources.shape[2:], mode="bilinear")
            perceptual = perceptual_loss(self.vgg(target)["conv4_2"].expand_as(fs["conv4_2"]), fs["conv4_2"])
        return float(gram), float(perceptual)

    def forward(self, model: nn.Module, batch: Mapping[str, torch.Tensor]):
        source = batch["source"]
        output = model(source)
        if self.kind == "contextual":
            terms = self.loss.terms(output, source=source)
            return sum(terms.values()), _as_float_logs(terms)
        gram_scale, perceptual_scale = self._known_scales()
        fo = self.vgg(output)
        with torch.no_grad():
            fs = self.vgg(source)
        gram = sum(gram_loss(fo[l], self._target_features(l).expand(len(output), -1, -1, -1))
                   for l in self.GRAM_LAYERS) / gram_scale
        content = perceptual_loss(fo["conv4_2"], fs["conv4_2"]) / perceptual_scale
        return gram + content, _as_float_logs({"gram^t": gram, "perceptual^s": content})


class PuppetObjective(_ScaledObjective):
    """Puppet control: paired but not aligned (input drawing, frame) pairs.

    Args:
        kind: ``"contextual"`` (L_CX^t on conv3_2 and conv4_2, + L_P^t) or ``"l1"`` (the
            baseline L_1^t + L_P^t).
        weights: VGG19 weights.
        band_width: h of the contextual term.
        perceptual_weight: weight of L_P^t, taken at conv5_2 (a coarse layer, which tolerates
            some misalignment), relative to the other term.
        scales: (L1, perceptual) values the terms are divided by; if ``None``, measured by
            :meth:`calibrate` on the first batch with the untrained network's output, before the
            first step (:func:`cxlib.train` does it, and keeps them in the checkpoint).

    The batch holds ``"source"`` (the drawings) and ``"target"`` (the frames).
    """

    def __init__(self, *, kind: str = "contextual", weights="imagenet", band_width: float = 0.5,
                 perceptual_weight: float = 0.1, scales: tuple[float, float] | None = None) -> None:
        kind = check_choice("kind", kind, ("contextual", "l1"))
        super().__init__(scales, needs_scales=True)
        self.kind = kind
        self.vgg = VGG19Features(["conv3_2", "conv4_2", "conv5_2"], weights=weights)
        self.cx = VGGContextualLoss({"conv3_2": 1.0, "conv4_2": 1.0}, {}, band_width=band_width,
                                    vgg=self.vgg)
        self.perceptual_weight = float(perceptual_weight)

    def measure_scales(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[float, float]:
        """L1 and perceptual (conv5_2) between the network's outputs and the batch's targets."""
        with torch.no_grad():
            output, target = model(batch["source"]).float(), batch["target"]
            perceptual = perceptual_loss(self.vgg(output)["conv5_2"], self.vgg(target)["conv5_2"])
            return float(l1_loss(output, target)), float(perceptual)

    def forward(self, model: nn.Module, batch: Mapping[str, torch.Tensor]):
        l1_scale, perceptual_scale = self._known_scales()
        output, target = model(batch["source"]), batch["target"]
        # One VGG pass each for the output and the target serves both terms.
        features = self.vgg(output)
        with torch.no_grad():
            target_features = self.vgg(target)
        fo, ft = features["conv5_2"], target_features["conv5_2"]
        perceptual = self.perceptual_weight * perceptual_loss(fo, ft) / perceptual_scale
        if self.kind == "contextual":
            terms = self.cx.terms_from_features(features, target=target_features)
            main, logs = sum(terms.values()), _as_float_logs(terms)
        else:
            main = l1_loss(output, target) / l1_scale
            logs = {"l1^t": float(main.detach())}
        return main + perceptual, {**logs, "perceptual^t": float(perceptual.detach())}


class DomainTransferObjective(nn.Module):
    """Unpaired domain transfer: L_CX^t(G(s), t) + L_CX^s(G(s), s), t from the other domain.

    Args:
        weights: VGG19 weights.
        band_width: h.

    The batch holds ``"source"`` (images of one domain) and ``"target"`` (random images of the
    other domain, one per source image).
    """

    def __init__(self, *, weights="imagenet", band_width: float = 0.5) -> None:
        super().__init__()
        self.loss = VGGContextualLoss({"conv3_2": 1.0, "conv4_2": 1.0}, {"conv4_2": 1.0},
                                      band_width=band_width, weights=weights)

    def forward(self, model: nn.Module, batch: Mapping[str, torch.Tensor]):
        source = batch["source"]
        terms = self.loss.terms(model(source), target=batch["target"], source=source)
        return sum(terms.values()), _as_float_logs(terms)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cxlib.apps",
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
    from .crn import CRN, crn_config
    from .data import CelebAAttribute, StackedImages, VideoFrames, edge_map, read_image_file
    from .train import StepBatches, train, training_device

    args = _parser().parse_args(argv)
    weights = None if args.weights == "random" else args.weights
    in_channels = 1 if args.task == "puppet" else 3
    model = CRN(crn_config(args.size), in_channels=in_channels)
    if args.task == "animation":
        frames = VideoFrames(args.video, args.size)
        target = read_image_file(args.target, args.size)[None]
        objective = AnimationObjective(target, kind="gram" if args.baseline else "contextual", weights=weights)
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


if __name__ == "__main__":
    sys.exit(main())
