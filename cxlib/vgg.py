"""VGG19 features by layer name (conv1_1 ... pool5), with ImageNet, random or local weights.

The network is described by a config list, as torchvision does, and its modules are numbered as
in ``torchvision.models.vgg19().features``, so that torchvision's state dicts load unchanged.
Unlike torchvision's, its ReLUs are not in place: the output of ``convX_Y`` is the convolution's
output before the ReLU (with in-place ReLUs a stored conv output silently becomes its ReLU).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import cast

import torch
from torch import nn

from ._checks import check_choice, check_tensor

__all__ = [
    "ALLOW_RANDOM_ENV",
    "IMAGENET_FILE",
    "WEIGHTS_ENV",
    "VGG19_CONFIG",
    "VGG19_LAYERS",
    "RandomWeightsWarning",
    "VGG19Features",
    "WeightsUnavailableError",
    "concat_layers",
    "imagenet_weights_path",
    "imagenet_weights_status",
]

#: Channels of each convolution, "M" for a 2x2 pooling (VGG19, configuration "E").
VGG19_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                512, 512, 512, 512, "M", 512, 512, 512, 512, "M")

#: The file torchvision downloads for ``VGG19_Weights.IMAGENET1K_V1`` (its name carries the hash).
IMAGENET_FILE = "vgg19-dcbb9e9d.pth"
#: Set to 1 to continue with seeded random weights when the ImageNet weights cannot be had.
ALLOW_RANDOM_ENV = "CXLIB_ALLOW_RANDOM_WEIGHTS"
#: Set to ``random`` to give every ``weights="imagenet"`` the seeded random weights without
#: trying to download anything (a book edition built with random weights on purpose).
WEIGHTS_ENV = "CXLIB_VGG_WEIGHTS"
#: Seed of the random weights (``weights=None`` and the fallback).
RANDOM_SEED = 0
#: How figures name the fallback weights.
RANDOM_LABEL = f"RANDOM (seed {RANDOM_SEED}; the ImageNet weights were unavailable)"
#: How figures name the random weights chosen with ``CXLIB_VGG_WEIGHTS=random``.
FORCED_RANDOM_LABEL = f"RANDOM (seed {RANDOM_SEED}; {WEIGHTS_ENV}=random)"


def _forced_random() -> bool:
    value = os.environ.get(WEIGHTS_ENV, "").strip().lower()
    if value not in ("", "imagenet", "random"):
        raise ValueError(f"{WEIGHTS_ENV} must be 'imagenet', 'random' or unset, got {value!r}")
    return value == "random"

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _layer_names(config: Iterable[int | str]) -> list[str]:
    """Names of the modules of ``features`` in order, e.g. conv1_1, relu1_1, ..., pool5."""
    names, block, index = [], 1, 1
    for item in config:
        if item == "M":
            names.append(f"pool{block}")
            block, index = block + 1, 1
        else:
            names += [f"conv{block}_{index}", f"relu{block}_{index}"]
            index += 1
    return names


#: Every layer name, in network order; position k is module ``features.k`` of torchvision's VGG19.
VGG19_LAYERS = tuple(_layer_names(VGG19_CONFIG))


class WeightsUnavailableError(RuntimeError):
    """The ImageNet weights could not be downloaded or read, and no fallback was allowed."""


class RandomWeightsWarning(UserWarning):
    """Features come from random, not pretrained, weights."""


_warned_random = False
# Set when a download of the ImageNet weights failed in this process: later modules do not try
# again (each try waits for the network) while random weights are allowed.
_download_failed = False


def imagenet_weights_path() -> Path:
    """Where torchvision keeps the ImageNet VGG19 weights: ``$TORCH_HOME/hub/checkpoints/``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILE


def _build_features(config: Iterable[int | str], pooling: str, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_channels = 3
    for item in config:
        if item == "M":
            pool = nn.MaxPool2d if pooling == "max" else nn.AvgPool2d
            layers.append(pool(kernel_size=2, stride=2))
        else:
            channels = int(item)
            layers += [nn.Conv2d(in_channels, channels, kernel_size=3, padding=1), nn.ReLU()]
            in_channels = channels
    return nn.Sequential(*layers[:depth])


def _random_state(features: nn.Sequential) -> dict[str, torch.Tensor]:
    """Seeded weights with torchvision's initialisation (Kaiming normal, fan-out; zero bias)."""
    generator = torch.Generator().manual_seed(RANDOM_SEED)
    state = {}
    for key, value in features.state_dict().items():
        if key.endswith("weight"):
            fan_out = value.shape[0] * value.shape[2] * value.shape[3]
            state[key] = torch.randn(value.shape, generator=generator) * (2.0 / fan_out) ** 0.5
        else:
            state[key] = torch.zeros_like(value)
    return state


def _load_imagenet_state() -> dict[str, torch.Tensor] | None:
    """torchvision's ImageNet state dict, or ``None`` if random weights are allowed instead."""
    from torchvision.models import VGG19_Weights

    global _download_failed
    path = imagenet_weights_path()
    cached = path.is_file()
    allow_random = os.environ.get(ALLOW_RANDOM_ENV) == "1"
    if not cached and _download_failed and allow_random:
        return None
    try:
        # Downloads into the TORCH_HOME cache (hash-checked) unless the file is already there.
        # torch.hub prints "Downloading: ..." on stdout; a library should not, and the progress
        # bar (stderr) already shows a download that happens.
        with contextlib.redirect_stdout(io.StringIO()):
            return VGG19_Weights.IMAGENET1K_V1.get_state_dict(progress=True, check_hash=True)
    except Exception as error:  # noqa: BLE001 - the cause is named in the message
        if cached:
            raise WeightsUnavailableError(
                f"The ImageNet VGG19 weights at {path} could not be read ({type(error).__name__}: "
                f"{error}). The file is probably corrupted or truncated: delete it and run again "
                f"to download it, or copy a good {IMAGENET_FILE} there."
            ) from error
        _download_failed = True
        if allow_random:
            return None
        raise WeightsUnavailableError(
            f"The ImageNet VGG19 weights could not be downloaded ({type(error).__name__}: "
            f"{error}). On a machine without network, put the file {IMAGENET_FILE} (from "
            f"{VGG19_Weights.IMAGENET1K_V1.url}) at {path} (the directory is "
            f"$TORCH_HOME/hub/checkpoints; TORCH_HOME defaults to ~/.cache/torch), or pass "
            f"weights=<path to a VGG19 state dict>. To continue with seeded random weights "
            f"instead (features without meaning), set {ALLOW_RANDOM_ENV}=1."
        ) from error


def imagenet_weights_status() -> str:
    """Which weights ``VGG19Features(..., weights="imagenet")`` will get in this process.

    ``"ImageNet"`` when the file is in the torch hub cache or can be downloaded there now (this
    downloads it), else the label of the seeded random fallback when
    ``CXLIB_ALLOW_RANDOM_WEIGHTS=1``, or of the random weights ``CXLIB_VGG_WEIGHTS=random`` asks
    for. Chapters call it first, so that their page can say which weights made its figures.

    Raises:
        WeightsUnavailableError: as :class:`VGG19Features`: no file, no network and no fallback.
    """
    if _forced_random():
        return FORCED_RANDOM_LABEL
    if imagenet_weights_path().is_file():
        return "ImageNet"
    if _load_imagenet_state() is None:
        return RANDOM_LABEL
    return "ImageNet"


def _load_local_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"weights: no such file {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - the cause is named in the message
        raise WeightsUnavailableError(
            f"weights: {path} could not be read as a state dict ({type(error).__name__}: {error})"
        ) from error
    if not isinstance(state, Mapping):
        raise WeightsUnavailableError(
            f"weights: {path} holds a {type(state).__name__}, expected a state dict (a mapping "
            "of parameter names such as 'features.0.weight' to tensors)"
        )
    return dict(state)


def _select_features_state(state: Mapping[str, torch.Tensor], features: nn.Sequential,
                           source: str) -> dict[str, torch.Tensor]:
    """The entries of ``state`` for ``features``, strictly: every key present, none unknown.

    Keys of deeper VGG19 layers than were kept, and the classifier's, are allowed and ignored.
    """
    wanted = {f"features.{key}" for key in features.state_dict()}
    all_vgg = {f"features.{i}.{p}" for i, name in enumerate(VGG19_LAYERS)
               if name.startswith("conv") for p in ("weight", "bias")}
    missing = sorted(wanted - state.keys())
    unexpected = sorted(k for k in state.keys() - all_vgg if not k.startswith("classifier."))
    if missing or unexpected:
        raise WeightsUnavailableError(
            f"weights from {source} do not match VGG19's features: missing keys {missing[:6]}"
            f"{' ...' if len(missing) > 6 else ''}, unexpected keys {unexpected[:6]}"
            f"{' ...' if len(unexpected) > 6 else ''}"
        )
    return {key[len("features."):]: state[key] for key in wanted}


def concat_layers(features: Mapping[str, torch.Tensor], layers: Iterable[str], *,
                  size: tuple[int, int] | None = None) -> torch.Tensor:
    """Several layers' features as one map: each resized to one size, divided by its number of
    channels, and concatenated along the channels.

    This is how the authors compare style at several layers with one contextual loss (relu2_1,
    relu3_1 and relu4_1 resized to relu2_1's size): one set of points whose every feature
    describes a position at several scales.

    Args:
        features: name -> feature map, as :class:`VGG19Features` returns.
        layers: the names to combine, in order.
        size: (H, W) of the result; default: the first layer's size. Resizing is bilinear.

    Shape:
        - features[l]: (B, C_l, H_l, W_l).
        - Output: (B, sum of C_l, H, W).

    Returns:
        The layers, each divided by its channel count, stacked along the channels.

    Example:
        >>> import torch, cxlib
        >>> feats = {"a": torch.ones(1, 2, 8, 8), "b": torch.ones(1, 4, 4, 4)}
        >>> out = cxlib.concat_layers(feats, ["a", "b"])
        >>> out.shape, out[0, :, 0, 0].tolist()
        (torch.Size([1, 6, 8, 8]), [0.5, 0.5, 0.25, 0.25, 0.25, 0.25])
    """
    import torch.nn.functional as F

    names = list(layers)
    if not names:
        raise ValueError("layers must name at least one layer, got none")
    missing = [name for name in names if name not in features]
    if missing:
        raise ValueError(f"features has no layers {missing}; it has {list(features)}")
    if size is None:
        size = cast("tuple[int, int]", tuple(features[names[0]].shape[2:]))
    parts = []
    for name in names:
        f = features[name]
        if tuple(f.shape[2:]) != tuple(size):
            f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
        parts.append(f / f.shape[1])
    return torch.cat(parts, dim=1)


class VGG19Features(nn.Module):
    """VGG19 feature maps by layer name, for images in [0, 1].

    The images are normalised with the ImageNet mean and standard deviation, passed through
    VGG19's convolutional part, cut after the deepest requested layer, and the requested layers'
    outputs are returned in a dict. Parameters are frozen and the module stays in eval mode.

    Args:
        layers: names from :data:`VGG19_LAYERS` (``conv1_1`` ... ``conv5_4``, ``relu1_1`` ...
            ``relu5_4``, ``pool1`` ... ``pool5``), or one name. ``convX_Y`` is the convolution's
            output before its ReLU, ``reluX_Y`` after it.
        weights: ``"imagenet"`` for torchvision's ``VGG19_Weights.IMAGENET1K_V1`` (downloaded
            into ``$TORCH_HOME/hub/checkpoints``, hash-checked); ``None`` for seeded random
            weights (no download); or the path of a local VGG19 state dict (torchvision's keys,
            ``features.0.weight`` ...), loaded with ``weights_only=True``.
        pooling: ``"max"`` (VGG19's) or ``"avg"`` (as the authors' CX code and Gatys et al.).

    Attributes:
        pretrained: True when the weights are ImageNet's or a local file's, False when random.
        weights_source: a short description of where the weights came from, for figure labels.

    Raises:
        ValueError: an unknown layer name (the message lists the valid ones) or pooling.
        WeightsUnavailableError: ``weights="imagenet"`` without network and without the file in
            the cache (the message says which file to put where), with a corrupted cached file,
            or a local file that is not a matching state dict. With the environment variable
            ``CXLIB_ALLOW_RANDOM_WEIGHTS=1``, missing ImageNet weights instead give a
            :class:`RandomWeightsWarning` (once per process) and seeded random weights; with
            ``CXLIB_VGG_WEIGHTS=random``, ``"imagenet"`` gives the seeded random weights without
            trying to download anything.

    Shape:
        - Input: (B, 3, H, W), values in [0, 1].
        - Output: dict name -> (B, C_l, H_l, W_l).

    Example:
        >>> import torch, cxlib
        >>> vgg = cxlib.VGG19Features(["conv1_2", "relu3_1"], weights=None)
        >>> out = vgg(torch.rand(1, 3, 32, 32))
        >>> {name: tuple(t.shape) for name, t in out.items()}
        {'conv1_2': (1, 64, 32, 32), 'relu3_1': (1, 256, 8, 8)}
        >>> vgg.pretrained
        False
    """

    mean: torch.Tensor  # buffers, (1, 3, 1, 1)
    std: torch.Tensor

    def __init__(self, layers: str | Iterable[str], *, weights: str | os.PathLike | None = "imagenet",
                 pooling: str = "max") -> None:
        super().__init__()
        names = [layers] if isinstance(layers, str) else list(layers)
        if not names:
            raise ValueError("layers must name at least one layer, got none")
        for name in names:
            if not isinstance(name, str) or name not in VGG19_LAYERS:
                raise ValueError(
                    f"unknown VGG19 layer {name!r}; valid names: {', '.join(VGG19_LAYERS)}"
                )
        self.pooling = check_choice("pooling", pooling, ("max", "avg"))
        self.layers = tuple(dict.fromkeys(names))
        self._index = {VGG19_LAYERS.index(name): name for name in self.layers}
        depth = max(self._index) + 1
        self.features = _build_features(VGG19_CONFIG, self.pooling, depth)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

        state, self.pretrained, self.weights_source = self._resolve_weights(weights)
        self.features.load_state_dict(state)
        self.requires_grad_(False)
        self.eval()

    def _resolve_weights(self, weights: object) -> tuple[dict[str, torch.Tensor], bool, str]:
        global _warned_random
        if weights is None:
            return _random_state(self.features), False, f"random (seed {RANDOM_SEED})"
        if isinstance(weights, str) and weights == "imagenet":
            if _forced_random():
                return _random_state(self.features), False, FORCED_RANDOM_LABEL
            state = _load_imagenet_state()
            if state is None:
                if not _warned_random:
                    warnings.warn(
                        f"The ImageNet VGG19 weights are not available ({imagenet_weights_path()} "
                        f"is missing and cannot be downloaded); {ALLOW_RANDOM_ENV}=1, so VGG19 "
                        f"uses seeded random weights: its features carry no learned meaning.",
                        RandomWeightsWarning,
                        stacklevel=3,
                    )
                    _warned_random = True
                return _random_state(self.features), False, RANDOM_LABEL
            return _select_features_state(state, self.features, "ImageNet"), True, "ImageNet"
        if isinstance(weights, (str, os.PathLike)):
            path = Path(weights)
            state = _load_local_state(path)
            return _select_features_state(state, self.features, str(path)), True, f"file {path.name}"
        raise TypeError(
            f"weights must be 'imagenet', None or a path to a state dict, got {type(weights).__name__}"
        )

    def train(self, mode: bool = True) -> VGG19Features:
        # A frozen feature extractor: always in eval mode.
        return super().train(False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        images = check_tensor("images", images, ndim=4)
        if images.shape[1] != 3:
            raise ValueError(f"images must have 3 channels (RGB), got shape {tuple(images.shape)}")
        out = {}
        h = (images - self.mean) / self.std
        for index, module in enumerate(self.features):
            h = module(h)
            if index in self._index:
                out[self._index[index]] = h
        return {name: out[name] for name in self.layers}

    def extra_repr(self) -> str:
        return f"layers={list(self.layers)}, pooling={self.pooling!r}, weights={self.weights_source!r}"
