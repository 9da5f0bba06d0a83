r"""Losses on VGG19 features of images: perceptual, Gram, and the contextual loss of Table 1.

Each module owns (or shares) a :class:`cxlib.VGG19Features` cut after its deepest layer, runs
the generated image through it once, and lets the features of a fixed reference image (the style
image, a single target) be computed once with ``fix_target``/``fix_source``/``fix_reference``
and reused at every step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import cast

import torch
from torch import nn

from ._checks import check_all_finite, check_choice, check_flag, check_generator, check_tensor
from ._reduction import REDUCTIONS
from .contextual.loss import contextual_loss
from .contextual.settings import check_settings
from .losses import gram_loss, perceptual_loss
from .vgg import VGG19_LAYERS, VGG19Features

__all__ = ["GramLoss", "PerceptualLoss", "VGGContextualLoss"]

#: Table 1 / the released single-image animation code: conv3_2 and conv4_2 against the target.
DEFAULT_TARGET_LAYERS = MappingProxyType({"conv3_2": 1.0, "conv4_2": 1.0})
#: ... and conv4_2 against the source.
DEFAULT_SOURCE_LAYERS = MappingProxyType({"conv4_2": 1.0})
#: Gatys et al.'s style layers.
DEFAULT_GRAM_LAYERS = MappingProxyType(
    {"relu1_1": 1.0, "relu2_1": 1.0, "relu3_1": 1.0, "relu4_1": 1.0, "relu5_1": 1.0}
)
#: A content layer as in Gatys et al.
DEFAULT_PERCEPTUAL_LAYERS = MappingProxyType({"conv4_2": 1.0})


def _check_layer_weights(name: str, layers: object, *, allow_empty: bool = False) -> dict[str, float]:
    if not isinstance(layers, Mapping):
        raise TypeError(
            f"{name} must be a mapping of VGG19 layer names to weights, e.g. {{'conv4_2': 1.0}}, "
            f"got {type(layers).__name__}"
        )
    if not layers and not allow_empty:
        raise ValueError(f"{name} must name at least one layer, got an empty mapping")
    checked = {}
    for layer, weight in layers.items():
        if layer not in VGG19_LAYERS:
            raise ValueError(
                f"{name}: unknown VGG19 layer {layer!r}; valid names: {', '.join(VGG19_LAYERS)}"
            )
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise TypeError(f"{name}[{layer!r}] must be a real number, got {type(weight).__name__}")
        checked[layer] = float(weight)
    return checked


class _VGGFeatureLoss(nn.Module):
    """Shared machinery: the VGG, the images check, and fixed reference features per role."""

    def __init__(self, roles: dict[str, dict[str, float]], weights: str | os.PathLike | None,
                 pooling: str, vgg: VGG19Features | None) -> None:
        super().__init__()
        self.roles = roles
        needed = list(dict.fromkeys(layer for layers in roles.values() for layer in layers))
        if vgg is None:
            vgg = VGG19Features(needed, weights=weights, pooling=pooling)
        elif not isinstance(vgg, VGG19Features):
            raise TypeError(f"vgg must be a cxlib.VGG19Features, got {type(vgg).__name__}")
        else:
            missing = [layer for layer in needed if layer not in vgg.layers]
            if missing:
                raise ValueError(f"vgg does not compute the layers {missing}; it has {list(vgg.layers)}")
        self.vgg = vgg
        self._fixed: dict[str, dict[str, torch.Tensor]] = {}
        # Whether images (and features given directly) are checked for NaN and inf.
        self.check_finite = False

    def _apply(self, fn, *args, **kwargs):
        # .to(), .cuda(), .double() also move the fixed reference features.
        super()._apply(fn, *args, **kwargs)
        self._fixed = {role: {k: fn(v) for k, v in feats.items()} for role, feats in self._fixed.items()}
        return self

    @property
    def pretrained(self) -> bool:
        """Whether the VGG's weights are pretrained (False: random, label figures so)."""
        return self.vgg.pretrained

    def _images(self, name: str, images: object) -> torch.Tensor:
        images = check_tensor(name, images, ndim=4)
        if images.shape[1] != 3:
            raise ValueError(f"{name} must be RGB images (B, 3, H, W), got shape {tuple(images.shape)}")
        if self.check_finite:
            # Once per image batch, not once per layer's features: one device synchronisation.
            check_all_finite(**{name: images})
        return images

    def _fix(self, role: str, images: torch.Tensor | None) -> None:
        if images is None:
            self._fixed.pop(role, None)
            return
        with torch.no_grad():
            features = self.vgg(self._images(role, images))
        self._fixed[role] = {layer: features[layer].detach() for layer in self.roles[role]}

    def _reference(self, role: str, images: torch.Tensor | Mapping[str, torch.Tensor] | None,
                   batch: int) -> dict[str, torch.Tensor]:
        """The reference's features (from its images, or given as ``self.vgg``'s output), a
        single reference image repeated over the batch."""
        if isinstance(images, Mapping):
            features = {layer: images[layer].detach() for layer in self.roles[role]}
            if self.check_finite:
                check_all_finite(**{f"{role}[{layer!r}]": f for layer, f in features.items()})
        elif images is not None:
            with torch.no_grad():
                features = self.vgg(self._images(role, images))
            features = {layer: features[layer] for layer in self.roles[role]}
        elif role in self._fixed:
            features = self._fixed[role]
        else:
            raise ValueError(
                f"no {role} given: pass {role}=<images (B, 3, H, W)> or call fix_{role}(images) first"
            )
        # One reference image serves every generated image; other batch sizes must match (the
        # losses check it).
        return {layer: f.expand(batch, -1, -1, -1) if f.shape[0] == 1 else f
                for layer, f in features.items()}


class VGGContextualLoss(_VGGFeatureLoss):
    r"""The contextual loss of Table 1: :math:`\mathcal{L}_{CX}^t(G(s), t) + \mathcal{L}_{CX}^s(G(s), s)`.

    .. math::

        \mathcal{L} = \sum_{l \in T} \lambda^t_l\,
        \mathcal{L}_{CX}(\Phi^l(G(s)), \Phi^l(t))
        + \sum_{l \in S} \lambda^s_l\, \mathcal{L}_{CX}(\Phi^l(G(s)), \Phi^l(s))

    over the target layers :math:`T` and the source layers :math:`S`.

    The generated image goes through VGG19 once for all layers. The target's (or source's)
    features can be fixed once with :meth:`fix_target` (:meth:`fix_source`) and reused.

    Args:
        target_layers: VGG19 layer -> weight, compared with the target t; empty for none.
        source_layers: VGG19 layer -> weight, compared with the source s; empty for none.
        band_width: h > 0 of Eq. 3.
        eps: epsilon >= 1e-12 of Eq. 2.
        distance: ``"cosine"``, ``"l2"`` or ``"l1"``.
        reduction: ``"mean"``, ``"sum"`` over the batch, or ``"none"``.
        implementation: ``"auto"``, ``"full"`` or ``"blocked"`` (see :func:`cxlib.contextual_loss`).
        block_size: rows per block for the blocked path, or ``None``.
        sample_positions: keep at most this many random positions per map, or ``None`` (exact).
        generator: CPU random generator for ``sample_positions``, kept and advanced at every
            call (``None``: torch's global one).
        check_finite: refuse NaN and inf in the images with a ``ValueError``: one device
            synchronisation per image batch passed (the features are not checked again per
            layer); ``False`` for none.
        centring: ``"sample"`` (the paper) or ``"batch"`` (the authors' code); see
            :func:`cxlib.contextual_loss`.
        weights: VGG19 weights, see :class:`cxlib.VGG19Features`.
        pooling: ``"max"`` or ``"avg"``.
        vgg: an existing :class:`cxlib.VGG19Features` to share (it must compute every layer).

    Shape:
        - generated: (B, 3, H, W) images in [0, 1].
        - target, source: (B, 3, H', W') or (1, 3, H', W'); one image is compared with every
          generated image. Sizes may differ from the generated images'.
        - Output: a scalar, or (B,) with ``reduction="none"``.

    Example:
        >>> import torch, cxlib
        >>> loss_fn = cxlib.VGGContextualLoss(weights=None)
        >>> target, source = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
        >>> loss_fn.fix_target(target)
        >>> float(loss_fn(target, source=target)) < 1e-4
        True
    """

    def __init__(
        self,
        target_layers: Mapping[str, float] = DEFAULT_TARGET_LAYERS,
        source_layers: Mapping[str, float] = DEFAULT_SOURCE_LAYERS,
        *,
        band_width: float = 0.5,
        eps: float = 1e-5,
        distance: str = "cosine",
        reduction: str = "mean",
        implementation: str = "auto",
        block_size: int | None = None,
        sample_positions: int | None = None,
        generator: torch.Generator | None = None,
        check_finite: bool = True,
        centring: str = "sample",
        weights: str | os.PathLike | None = "imagenet",
        pooling: str = "max",
        vgg: VGG19Features | None = None,
    ) -> None:
        roles = {
            "target": _check_layer_weights("target_layers", target_layers, allow_empty=True),
            "source": _check_layer_weights("source_layers", source_layers, allow_empty=True),
        }
        if not roles["target"] and not roles["source"]:
            raise ValueError("target_layers and source_layers are both empty: nothing to compare")
        settings = check_settings(band_width, eps, distance, implementation, block_size,
                                  sample_positions, centring=centring)
        reduction = check_choice("reduction", reduction, REDUCTIONS)
        super().__init__(roles, weights, pooling, vgg)
        self.settings = settings
        self.reduction = reduction
        self.generator = check_generator("generator", generator)
        self.check_finite = check_flag("check_finite", check_finite)

    def fix_target(self, target: torch.Tensor | None) -> None:
        """Compute the target's features once; later calls may omit ``target``. ``None`` clears."""
        self._fix("target", target)

    def fix_source(self, source: torch.Tensor | None) -> None:
        """Compute the source's features once; later calls may omit ``source``. ``None`` clears."""
        self._fix("source", source)

    def terms(self, generated: torch.Tensor, target: torch.Tensor | None = None,
              source: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Each unweighted term, keyed ``"target/<layer>"`` and ``"source/<layer>"``."""
        return self._terms(self.vgg(self._images("generated", generated)), target, source)

    def terms_from_features(self, features: Mapping[str, torch.Tensor],
                            target: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
                            source: torch.Tensor | Mapping[str, torch.Tensor] | None = None
                            ) -> dict[str, torch.Tensor]:
        """:meth:`terms` from the generated images' features (``self.vgg``'s output), for a
        caller that needs those features for other losses too; ``target`` and ``source`` may
        likewise be images or features."""
        if self.check_finite:
            used = dict.fromkeys(layer for layers in self.roles.values() for layer in layers)
            check_all_finite(**{f"features[{layer!r}]": features[layer] for layer in used})
        return self._terms(features, target, source)

    def _terms(self, features: Mapping[str, torch.Tensor],
               target: torch.Tensor | Mapping[str, torch.Tensor] | None,
               source: torch.Tensor | Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        batch = next(iter(features.values())).shape[0]
        out = {}
        for role, images in (("target", target), ("source", source)):
            if not self.roles[role]:
                continue
            reference = self._reference(role, images, batch)
            for layer in self.roles[role]:
                out[self._key(role, layer)] = contextual_loss(
                    features[layer], reference[layer],
                    band_width=self.settings.band_width, eps=self.settings.eps,
                    distance=self.settings.distance, reduction=self.reduction,
                    implementation=self.settings.implementation,
                    block_size=self.settings.block_size,
                    sample_positions=self.settings.sample_positions,
                    generator=self.generator,
                    check_finite=False,  # the images were checked
                    centring=self.settings.centring,
                )
        return out

    def forward(self, generated: torch.Tensor, target: torch.Tensor | None = None,
                source: torch.Tensor | None = None) -> torch.Tensor:
        terms = self.terms(generated, target, source)
        return cast(torch.Tensor, sum(
            weight * terms[self._key(role, layer)]
            for role, layers in self.roles.items()
            for layer, weight in layers.items()
        ))

    @staticmethod
    def _key(role: str, layer: str) -> str:
        return f"{role}/{layer}"

    def extra_repr(self) -> str:
        return (f"target_layers={self.roles['target']}, source_layers={self.roles['source']}, "
                f"band_width={self.settings.band_width}, distance={self.settings.distance!r}")


class _SingleReferenceLoss(_VGGFeatureLoss):
    """A weighted sum over layers of one per-layer loss against one reference image."""

    def __init__(self, layers: Mapping[str, float], *, reduction: str,
                 weights: str | os.PathLike | None, pooling: str, vgg: VGG19Features | None) -> None:
        reduction = check_choice("reduction", reduction, REDUCTIONS)
        super().__init__({"reference": _check_layer_weights("layers", layers)}, weights, pooling, vgg)
        self.reduction = reduction

    def _layer_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def fix_reference(self, reference: torch.Tensor | None) -> None:
        """Compute the reference's features once; later calls may omit it. ``None`` clears."""
        self._fix("reference", reference)

    def forward(self, generated: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        features = self.vgg(self._images("generated", generated))
        reference_features = self._reference("reference", reference, generated.shape[0])
        return cast(torch.Tensor, sum(
            weight * self._layer_loss(features[layer], reference_features[layer])
            for layer, weight in self.roles["reference"].items()
        ))

    def extra_repr(self) -> str:
        return f"layers={self.roles['reference']}, reduction={self.reduction!r}"


class PerceptualLoss(_SingleReferenceLoss):
    r"""Perceptual loss on images: :math:`\sum_l \lambda_l \|\Phi^l(x) - \Phi^l(y)\|_1` (means).

    Args:
        layers: VGG19 layer -> weight.
        reduction: ``"mean"``, ``"sum"`` over the batch, or ``"none"``.
        weights: VGG19 weights, see :class:`cxlib.VGG19Features`.
        pooling: ``"max"`` or ``"avg"``.
        vgg: an existing :class:`cxlib.VGG19Features` to share.

    Shape:
        - generated, reference: (B, 3, H, W) images in [0, 1], the same size (aligned).

    Example:
        >>> import torch, cxlib
        >>> loss_fn = cxlib.PerceptualLoss({"relu2_2": 1.0}, weights=None)
        >>> x = torch.rand(1, 3, 16, 16)
        >>> float(loss_fn(x, x))
        0.0
    """

    def __init__(self, layers: Mapping[str, float] = DEFAULT_PERCEPTUAL_LAYERS, *,
                 reduction: str = "mean", weights: str | os.PathLike | None = "imagenet",
                 pooling: str = "max", vgg: VGG19Features | None = None) -> None:
        super().__init__(layers, reduction=reduction, weights=weights, pooling=pooling, vgg=vgg)

    def _layer_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return perceptual_loss(x, y, reduction=self.reduction)


class GramLoss(_SingleReferenceLoss):
    r"""Gram (style) loss on images: :math:`\sum_l \lambda_l \tfrac14\|G^l(x) - G^l(y)\|_F^2`.

    Args:
        layers: VGG19 layer -> weight (default: Gatys et al.'s relu1_1 ... relu5_1).
        reduction: ``"mean"``, ``"sum"`` over the batch, or ``"none"``.
        weights: VGG19 weights, see :class:`cxlib.VGG19Features`.
        pooling: ``"max"`` or ``"avg"``.
        vgg: an existing :class:`cxlib.VGG19Features` to share.

    Shape:
        - generated, reference: (B, 3, H, W) images in [0, 1]; sizes may differ.

    Example:
        >>> import torch, cxlib
        >>> loss_fn = cxlib.GramLoss(weights=None)
        >>> style = torch.rand(1, 3, 32, 32)
        >>> loss_fn.fix_reference(style)
        >>> float(loss_fn(style.flip(-1))) < float(loss_fn(torch.rand(1, 3, 32, 32)))
        True
    """

    def __init__(self, layers: Mapping[str, float] = DEFAULT_GRAM_LAYERS, *,
                 reduction: str = "mean", weights: str | os.PathLike | None = "imagenet",
                 pooling: str = "max", vgg: VGG19Features | None = None) -> None:
        super().__init__(layers, reduction=reduction, weights=weights, pooling=pooling, vgg=vgg)

    def _layer_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return gram_loss(x, y, reduction=self.reduction)
