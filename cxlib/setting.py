"""The book's size switch: ``CXLIB_FAST=1`` (CI, a laptop) gives small sizes, the default the paper's.

Every chapter starts with ``setting = cxlib.setting.book_setting()`` and then picks its sizes with
``setting.choose(fast=..., full=...)``.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

__all__ = ["FAST_ENV", "BookSetting", "book_setting"]

#: The environment variable of the switch.
FAST_ENV = "CXLIB_FAST"

T = TypeVar("T")


@dataclass(frozen=True)
class BookSetting:
    """Which setting a chapter runs at, on which device, from which seed."""

    fast: bool
    device: torch.device
    seed: int

    def choose(self, *, fast: T, full: T) -> T:
        """``fast`` at the fast setting, ``full`` at the full one."""
        return fast if self.fast else full

    def describe(self) -> str:
        """One line for the chapter's output, e.g. 'fast setting (CXLIB_FAST=1) on cpu, seed 0'."""
        which = f"fast setting ({FAST_ENV}=1)" if self.fast else "full setting (the paper's sizes)"
        where = self.device.type
        if self.device.type == "cuda":
            where = f"cuda ({torch.cuda.get_device_name(self.device)})"
        return f"{which} on {where}, seed {self.seed}"


def book_setting(seed: int = 0, *, device: str | torch.device | None = None) -> BookSetting:
    """Read ``CXLIB_FAST``, seed Python, NumPy and torch, and pick the device (CUDA if present).

    Example:
        >>> import cxlib.setting
        >>> s = cxlib.setting.book_setting(seed=1, device="cpu")
        >>> s.choose(fast=64, full=256) in (64, 256)
        True
    """
    fast = os.environ.get(FAST_ENV, "0").strip().lower() not in ("", "0", "false", "no")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return BookSetting(fast=fast, device=torch.device(device), seed=seed)
