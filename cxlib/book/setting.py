"""The book's setting: which sizes a chapter runs at, on which device, and how a page was made.

The setting follows the hardware: the paper's sizes ("full") where a CUDA GPU is present, small
sizes ("fast") on a CPU, where the full setting would train for hours. Environment variables
override it:

- ``CXLIB_SETTING=fast`` or ``CXLIB_SETTING=full`` chooses explicitly; ``CXLIB_SETTING=smoke``
  is the full setting's sizes, networks, layers and batch with every optimisation and training
  loop cut to a few steps and every sweep to a couple of points: a check, in minutes, that a
  chapter runs end to end at the paper's sizes (and fits in memory), not a result;
- ``CXLIB_FAST=1`` (the older switch) means fast, ``CXLIB_FAST=0`` full;
- ``CXLIB_SEED`` replaces every chapter's seed (to check that a chapter's claims do not depend on
  it);
- ``CXLIB_RUNS_DIR`` is where the training chapters keep their run directories (checkpoints and
  samples), ``runs`` by default; on Colab, point it at Google Drive so that a disconnected
  runtime does not lose its training.

Every chapter starts with ``setting = cxlib.book.setting.book_setting()``, picks its sizes with
``setting.choose(fast=..., full=...)`` (adding ``smoke=...`` for the number of steps of a loop
and the points of a sweep; without it the smoke setting takes the full value), and shows ``setting.provenance()``: one line that says
with which setting, device, VGG19 weights, cxlib version and date the page was made.
"""

from __future__ import annotations

import datetime
import hashlib
import html
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

__all__ = [
    "FAST_ENV",
    "RUNS_ENV",
    "SEED_ENV",
    "SETTINGS",
    "SETTING_ENV",
    "BookSetting",
    "Provenance",
    "book_setting",
    "glue",
    "resolve_setting",
]

#: The explicit switch: ``fast``, ``full`` or ``smoke``.
SETTING_ENV = "CXLIB_SETTING"
#: The older switch: ``1`` for fast, ``0`` for full. ``CXLIB_SETTING`` wins over it.
FAST_ENV = "CXLIB_FAST"
#: Replaces the seed every chapter passes to :func:`book_setting`.
SEED_ENV = "CXLIB_SEED"
#: Where the training chapters keep their run directories.
RUNS_ENV = "CXLIB_RUNS_DIR"
#: The settings a chapter can run at.
SETTINGS = ("fast", "full", "smoke")

T = TypeVar("T")

_FALSE = ("", "0", "false", "no", "off")


def resolve_setting(cuda_available: bool | None = None) -> tuple[str, str]:
    """The setting to run at, and why: ``(name, reason)``.

    ``CXLIB_SETTING`` wins, then ``CXLIB_FAST``, then the hardware rule (full on a CUDA GPU, fast
    on a CPU). The smoke setting is only ever chosen explicitly.

    Args:
        cuda_available: whether a CUDA GPU is present; asked of torch if ``None``.

    Raises:
        ValueError: ``CXLIB_SETTING`` is set to something other than ``fast``, ``full`` or
            ``smoke``.

    Example:
        >>> import os
        >>> from cxlib.book.setting import resolve_setting
        >>> os.environ["CXLIB_SETTING"] = "fast"
        >>> resolve_setting()
        ('fast', 'CXLIB_SETTING=fast')
        >>> del os.environ["CXLIB_SETTING"]
    """
    explicit = os.environ.get(SETTING_ENV, "").strip().lower()
    if explicit:
        if explicit not in SETTINGS:
            raise ValueError(
                f"{SETTING_ENV} must be one of {SETTINGS} (or unset), got {os.environ[SETTING_ENV]!r}"
            )
        return explicit, f"{SETTING_ENV}={explicit}"
    if FAST_ENV in os.environ:
        value = os.environ[FAST_ENV]
        fast = value.strip().lower() not in _FALSE
        return ("fast" if fast else "full"), f"{FAST_ENV}={value.strip()}"
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if cuda_available:
        return "full", "a CUDA GPU is present"
    return "fast", "no CUDA GPU: the full setting would take hours on a CPU"


def _device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


@dataclass(frozen=True)
class Provenance:
    """How a page was made, as one line; shown as a framed line in HTML and as text elsewhere.

    Attributes:
        items: (label, value) pairs, e.g. ("setting", "fast").
    """

    items: tuple[tuple[str, str], ...]

    def __str__(self) -> str:
        return "Made with: " + " · ".join(f"{label} {value}" for label, value in self.items)

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        parts = " · ".join(
            f"{html.escape(label)} <b>{html.escape(value)}</b>" for label, value in self.items
        )
        return (
            '<div class="cx-provenance" style="border-left:4px solid #c9a227;'
            "background:#fdf8e4;color:#333;padding:0.4em 0.8em;margin:0.2em 0;"
            f'font-size:0.9em">Made with: {parts}</div>'
        )


@dataclass(frozen=True)
class BookSetting:
    """Which setting a chapter runs at, on which device, from which seed.

    Attributes:
        name: ``"fast"``, ``"full"`` or ``"smoke"``.
        reason: why this setting (the variable that chose it, or the hardware).
        device: where the chapter computes.
        seed: the seed Python, NumPy and torch were seeded with.
        vgg_weights: which VGG19 weights the chapter's VGG19 uses (``"ImageNet"`` or the label of
            the random fallback), or ``None`` if the chapter uses no VGG19.
    """

    name: str
    reason: str
    device: torch.device
    seed: int
    vgg_weights: str | None = None

    @property
    def fast(self) -> bool:
        """True at the fast setting."""
        return self.name == "fast"

    @property
    def smoke(self) -> bool:
        """True at the smoke setting (the full sizes, a few steps per loop)."""
        return self.name == "smoke"

    def choose(self, *, fast: T, full: T, smoke: T | None = None) -> T:
        """``fast`` at the fast setting, ``full`` at the full one; at the smoke setting
        ``smoke`` where given (a loop's few steps, a sweep's couple of points), else ``full``.

        Example:
            >>> from cxlib.book.setting import BookSetting
            >>> import torch
            >>> s = BookSetting("smoke", "CXLIB_SETTING=smoke", torch.device("cpu"), 0)
            >>> s.choose(fast=64, full=256), s.choose(fast=100, full=6000, smoke=3)
            (256, 3)
        """
        if self.fast:
            return fast
        if self.smoke and smoke is not None:
            return smoke
        return full

    @property
    def device_label(self) -> str:
        """The device and, for a GPU, its name, e.g. 'cuda:0 (Tesla T4)'."""
        return _device_label(self.device)

    def describe(self) -> str:
        """One line for the chapter's output, e.g. 'fast setting (CXLIB_SETTING=fast) on cpu, seed 0'."""
        which = {
            "fast": "fast setting",
            "full": "full setting (the paper's sizes)",
            "smoke": "smoke setting (the paper's sizes, a few steps per loop: a check that the"
                     " chapter runs, not a result)",
        }[self.name]
        return f"{which} ({self.reason}) on {self.device_label}, seed {self.seed}"

    def runs_dir(self, *parts: str, key: object = None) -> Path:
        """A run directory under ``$CXLIB_RUNS_DIR`` (default ``runs``), e.g. ``runs_dir("puppet")``.

        For a chapter that uses VGG19 the weights are part of the path (``runs/imagenet/...`` or
        ``runs/random/...``), and ``key`` (what makes a checkpoint fit the run: the network's
        configuration, the learning rate, the data) adds a short digest of its ``repr``: a run
        trained with other weights or another configuration is never reloaded as if it were
        this one. The number of steps belongs outside the key: a longer run continues a shorter.

        Example:
            >>> from cxlib.book.setting import book_setting
            >>> book_setting(device="cpu").runs_dir("animation", "64px").parts[-2:]
            ('animation', '64px')
            >>> book_setting(device="cpu").runs_dir("animation", key=(0.1, [64, 32])).name
            'animation-9973f432'
        """
        root = Path(os.environ.get(RUNS_ENV) or "runs").expanduser()
        if self.vgg_weights is not None:
            root = root / ("imagenet" if self.vgg_weights == "ImageNet" else "random")
        path = root.joinpath(*parts)
        if key is not None:
            digest = hashlib.sha256(repr(key).encode()).hexdigest()[:8]
            path = path.with_name(f"{path.name}-{digest}")
        return path

    def provenance(self, *, today: datetime.date | None = None) -> Provenance:
        """How this page was made: setting, device, VGG19 weights, cxlib and torch versions, date.

        Example:
            >>> import datetime
            >>> from cxlib.book.setting import book_setting
            >>> s = book_setting(device="cpu")
            >>> str(s.provenance(today=datetime.date(2026, 1, 2))).endswith("date 2026-01-02")
            True
        """
        from .. import __version__

        today = today or datetime.date.today()
        weights = self.vgg_weights if self.vgg_weights is not None else "not used in this chapter"
        return Provenance((
            ("setting", self.name),
            ("device", self.device_label),
            ("VGG19 weights", weights),
            ("cxlib", __version__),
            ("torch", torch.__version__),
            ("date", today.isoformat()),
        ))


def book_setting(seed: int = 0, *, device: str | torch.device | None = None,
                 uses_vgg: bool = False) -> BookSetting:
    """Resolve the setting, seed Python, NumPy and torch, pick the device (CUDA if present).

    Args:
        seed: the chapter's seed; ``CXLIB_SEED`` replaces it.
        device: where to compute; CUDA if present, else the CPU.
        uses_vgg: the chapter uses the ImageNet VGG19: find out now which weights it will get
            (downloading them into the torch hub cache if needed, see
            :func:`cxlib.vgg.imagenet_weights_status`), so that the page can say so.

    Returns:
        The chapter's :class:`BookSetting`: the setting's name and why, the device, the seed
        and the VGG weights the chapter will get.

    Raises:
        ValueError: ``CXLIB_SETTING`` or ``CXLIB_SEED`` has a value that is not understood.
        WeightsUnavailableError: ``uses_vgg`` and the ImageNet weights cannot be had, and
            ``CXLIB_ALLOW_RANDOM_WEIGHTS=1`` is not set.

    Example:
        >>> import cxlib.book.setting
        >>> s = cxlib.book.setting.book_setting(seed=1, device="cpu")
        >>> s.choose(fast=64, full=256) in (64, 256)
        True
    """
    override = os.environ.get(SEED_ENV, "").strip()
    if override:
        try:
            seed = int(override)
        except ValueError:
            raise ValueError(f"{SEED_ENV} must be an integer, got {override!r}") from None
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    name, reason = resolve_setting(cuda_available=device.type == "cuda")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    weights = None
    if uses_vgg:
        from ..vgg import imagenet_weights_status

        weights = imagenet_weights_status()
    return BookSetting(name=name, reason=reason, device=device, seed=seed, vgg_weights=weights)


def glue(name: str, value: object) -> None:
    """Hand a value measured by a chapter to the page's text (myst-nb's ``glue``), where it is
    written ``{glue:text}`name:.1f``` instead of a number typed by hand.

    Nothing is shown in the notebook; where myst-nb is not installed (Colab), nothing happens.

    Args:
        name: the name the page's text uses.
        value: the value (a number, a string, a figure).

    Returns:
        None.

    Example:
        >>> from cxlib.book import glue
        >>> glue("psnr_cx", 27.3)  # shown in the page as {glue:text}`psnr_cx:.1f`
    """
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        return
    myst_glue(name, value, display=False)
