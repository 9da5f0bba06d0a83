"""Argument checks shared by the losses: clear errors, never asserts.

Every check raises ``TypeError`` for a value of the wrong kind and ``ValueError`` for a value of
the right kind that is out of range, and says what was expected and what was got.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Literal, overload

import torch

__all__ = [
    "check_all_finite",
    "check_choice",
    "check_feature_pair",
    "check_finite",
    "check_flag",
    "check_generator",
    "check_nonnegative",
    "check_positive",
    "check_positive_int",
    "check_tensor",
]


def check_positive(name: str, value: object) -> float:
    """Return ``value`` as a float after checking that it is a finite real number > 0."""
    number = _real_number(name, value)
    if not number > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return number


def check_nonnegative(name: str, value: object) -> float:
    """Return ``value`` as a float after checking that it is a finite real number >= 0."""
    number = _real_number(name, value)
    if not number >= 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return number


@overload
def check_positive_int(name: str, value: object, *, allow_none: Literal[False] = False) -> int: ...


@overload
def check_positive_int(name: str, value: object, *, allow_none: bool) -> int | None: ...


def check_positive_int(name: str, value: object, *, allow_none: bool = False) -> int | None:
    """Return ``value`` after checking that it is an ``int`` >= 1 (or ``None`` when allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        expected = "an int >= 1 or None" if allow_none else "an int >= 1"
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def check_choice(name: str, value: object, choices: Collection[str]) -> str:
    """Return ``value`` after checking that it is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value


def check_generator(name: str, value: object) -> torch.Generator | None:
    """Check that ``value`` is ``None`` or a CPU ``torch.Generator`` (positions are drawn on the
    CPU, whatever the features' device)."""
    if value is None:
        return None
    if not isinstance(value, torch.Generator):
        raise TypeError(
            f"{name} must be a torch.Generator or None, got {type(value).__name__} {value!r} "
            "(for a seed s, pass torch.Generator().manual_seed(s))"
        )
    if value.device.type != "cpu":
        raise ValueError(f"{name} must be a CPU torch.Generator, got one on {value.device}")
    return value


def check_tensor(name: str, value: object, *, ndim: int) -> torch.Tensor:
    """Check that ``value`` is a floating-point tensor with ``ndim`` dimensions."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(
            f"{name} must be a {ndim}-D tensor, got {value.dim()}-D with shape {tuple(value.shape)}"
        )
    if not value.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {value.dtype}")
    return value


def check_finite(name: str, value: torch.Tensor) -> None:
    """Raise ``ValueError`` if ``value`` holds a NaN or an infinity."""
    if not bool(torch.isfinite(value).all()):
        bad = (~torch.isfinite(value)).sum().item()
        raise ValueError(f"{name} must be finite, got {bad} NaN or inf value(s)")


def check_flag(name: str, value: object) -> bool:
    """Return ``value`` after checking that it is a ``bool``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def check_all_finite(**tensors: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the tensors that hold a NaN or an infinity.

    One device synchronisation for all of them (a GPU waits for its queued work to finish):
    the counts for the message are only computed when something is wrong.
    """
    flags = [torch.isfinite(t).all() for t in tensors.values()]
    if bool(torch.stack(flags).all()):
        return
    for name, value in tensors.items():
        check_finite(name, value)


# Dtypes that autocast mixes: a pair of them is compared in float32.
_MIXED_PRECISION = {torch.float16, torch.bfloat16, torch.float32}


def check_feature_pair(x: object, y: object, *, finite: bool = True
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Check two feature maps (B, C, H, W) that are compared position against position.

    Batch sizes and channel counts must agree; the spatial sizes may differ. The dtypes must
    agree, except that half precision (float16, bfloat16) may meet float32, as it does under
    autocast when one side's features were computed (or fixed) outside it: both are then
    returned as float32. With ``finite``, NaN and inf are refused too (one device
    synchronisation).
    """
    x = check_tensor("x", x, ndim=4)
    y = check_tensor("y", y, ndim=4)
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must have the same batch size, got x {tuple(x.shape)} and y {tuple(y.shape)}"
        )
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            "x and y must have the same number of channels, "
            f"got x {tuple(x.shape)} and y {tuple(y.shape)}"
        )
    if x.dtype != y.dtype and {x.dtype, y.dtype} <= _MIXED_PRECISION:
        x, y = x.float(), y.float()
    if x.dtype != y.dtype:
        raise TypeError(f"x and y must have the same dtype, got {x.dtype} and {y.dtype}")
    if x.device != y.device:
        raise ValueError(f"x and y must be on the same device, got {x.device} and {y.device}")
    if x.numel() == 0 or y.numel() == 0:
        raise ValueError(
            "x and y must be non-empty (batch, channels and positions >= 1), "
            f"got x {tuple(x.shape)} and y {tuple(y.shape)}"
        )
    if finite:
        check_all_finite(x=x, y=y)
    return x, y


def _real_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number
