"""The paper's trained applications (Table 1): the loss of each, and a command line to train them.

Each objective is a module called as ``objective(model, batch)`` by :func:`cxlib.training.train`; it
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
batch, before the first step: :func:`cxlib.training.train` calls the objective's ``calibrate``, stores the
values in the checkpoint (a resumed run keeps them) and broadcasts rank 0's to every rank (all
ranks optimise the same objective). Pass ``scales=`` to fix them yourself.

The command line that trains them is :mod:`cxlib.training.cli`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import torch
from torch import nn

from .._checks import check_choice, check_nonnegative
from ..contextual import contextual_loss
from ..losses import gram_loss, l1_loss, perceptual_loss
from ..patches import PatchFeatures
from ..vgg import VGG19Features
from ..vgg_losses import DEFAULT_SOURCE_LAYERS, DEFAULT_TARGET_LAYERS, VGGContextualLoss

__all__ = ["AnimationObjective", "DomainTransferObjective", "PuppetObjective"]


def _as_float_logs(terms: Mapping[str, torch.Tensor]) -> dict[str, float]:
    return {name: float(value.detach()) for name, value in terms.items()}


def _check_scales(scales: object) -> tuple[float, float]:
    if not isinstance(scales, (tuple, list)) or len(scales) != 2:
        raise TypeError(f"scales must be a pair of positive numbers, got {scales!r}")
    values = tuple(float(v) for v in scales)
    if not all(v > 0 and v < float("inf") for v in values):
        raise ValueError(f"scales must be positive and finite, got {values}")
    return cast("tuple[float, float]", values)


class _ScaledObjective(nn.Module):
    """An objective whose terms are divided by two scales measured once, before training.

    The calibration protocol of :func:`cxlib.training.train`: ``calibrated``, ``calibrate(model, batch)``,
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
                "cxlib.training.train measures them before the first step, or call "
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
            ``None``, measured on the first batch by :meth:`calibrate` (which :func:`cxlib.training.train`
            calls before the first step).

    Shape:
        - target: (1, 3, H, W).
        - The batch: ``{"source": frames (B, 3, H, W)}``; the output: (the loss, a dict of its
          terms as floats).

    Example:
        >>> import torch
        >>> from cxlib import CRN, crn_config
        >>> from cxlib.training import AnimationObjective
        >>> net = CRN(crn_config(16, wide=6, narrow=4, narrow_from=16))
        >>> objective = AnimationObjective(torch.rand(1, 3, 16, 16), weights=None)
        >>> loss, logs = objective(net, {"source": torch.rand(2, 3, 16, 16)})
        >>> sorted(logs)
        ['source/conv4_2', 'target/conv3_2', 'target/conv4_2']
    """

    GRAM_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")

    target: torch.Tensor  # a buffer, (1, 3, H, W)

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

    def forward(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        source = batch["source"]
        output = model(source)
        if self.kind == "contextual":
            terms = self.loss.terms(output, source=source)
            return cast(torch.Tensor, sum(terms.values())), _as_float_logs(terms)
        gram_scale, perceptual_scale = self._known_scales()
        fo = self.vgg(output)
        with torch.no_grad():
            fs = self.vgg(source)
        gram = cast(torch.Tensor, sum(gram_loss(fo[l], self._target_features(l).expand(len(output), -1, -1, -1))
                   for l in self.GRAM_LAYERS)) / gram_scale
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
            first step (:func:`cxlib.training.train` does it, and keeps them in the checkpoint).

    Shape:
        - The batch: ``{"source": drawings (B, 1, H, W), "target": frames (B, 3, H, W)}``;
          the output: (the loss, a dict of its terms as floats).

    Example:
        >>> import torch
        >>> from cxlib import CRN, crn_config
        >>> from cxlib.training import PuppetObjective
        >>> net = CRN(crn_config(16, wide=6, narrow=4, narrow_from=16), in_channels=1)
        >>> objective = PuppetObjective(weights=None)
        >>> batch = {"source": torch.rand(2, 1, 16, 16), "target": torch.rand(2, 3, 16, 16)}
        >>> objective.calibrate(net, batch)  # train() does this before the first step
        >>> loss, logs = objective(net, batch)
        >>> sorted(logs)
        ['perceptual^t', 'target/conv3_2', 'target/conv4_2']
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

    def forward(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
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

    The defaults are the paper's: the target term on ``conv3_2`` and ``conv4_2``, the source term
    on ``conv4_2``, h = 0.5. The other arguments exist for the ablation of the domain-transfer
    chapter: the layers and weights of each term, and a source term on raw RGB patches (which,
    unlike VGG features, describe a small image's layout whatever the weights).

    Args:
        weights: VGG19 weights.
        band_width: h.
        target_layers: VGG19 layer -> weight of the target term (``None``: the paper's).
        source_layers: VGG19 layer -> weight of the source term (``None``: the paper's); empty
            for no VGG source term.
        source_patches: weight of a source term on raw RGB patches,
            L_CX(patches(G(s)), patches(s)); 0 for none (the paper).
        patch_size: side of those patches.
        patch_stride: step between those patches.

    Shape:
        - The batch: ``{"source": images of one domain (B, 3, H, W), "target": random images of
          the other domain (B, 3, H, W)}``; the output: (the loss, a dict of its terms).

    Example:
        >>> import torch
        >>> from cxlib import CRN, crn_config
        >>> from cxlib.training import DomainTransferObjective
        >>> net = CRN(crn_config(16, wide=6, narrow=4, narrow_from=16))
        >>> objective = DomainTransferObjective(weights=None)
        >>> batch = {"source": torch.rand(2, 3, 16, 16), "target": torch.rand(2, 3, 16, 16)}
        >>> loss, logs = objective(net, batch)
        >>> sorted(logs)
        ['source/conv4_2', 'target/conv3_2', 'target/conv4_2']
    """

    def __init__(self, *, weights="imagenet", band_width: float = 0.5,
                 target_layers: Mapping[str, float] | None = None,
                 source_layers: Mapping[str, float] | None = None,
                 source_patches: float = 0.0, patch_size: int = 5, patch_stride: int = 2) -> None:
        super().__init__()
        self.loss = VGGContextualLoss(
            DEFAULT_TARGET_LAYERS if target_layers is None else target_layers,
            DEFAULT_SOURCE_LAYERS if source_layers is None else source_layers,
            band_width=band_width, weights=weights)
        self.source_patches = check_nonnegative("source_patches", source_patches)
        self.patches = PatchFeatures(size=patch_size, stride=patch_stride)

    def forward(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        source = batch["source"]
        output = model(source)
        terms = self.loss.terms(output, target=batch["target"], source=source)
        weighted = cast(torch.Tensor, sum(self.loss.roles[role][layer] * terms[f"{role}/{layer}"]
                       for role in ("target", "source") for layer in self.loss.roles[role]))
        if self.source_patches:
            terms["source/patches"] = contextual_loss(
                self.patches(output), self.patches(source),
                band_width=self.loss.settings.band_width, check_finite=False)
            weighted = weighted + self.source_patches * terms["source/patches"]
        return weighted, _as_float_logs(terms)
