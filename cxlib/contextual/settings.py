"""The contextual losses' hyper-parameters, checked once, and the choices they name."""

from __future__ import annotations

from dataclasses import dataclass

from .._checks import check_choice, check_flag, check_positive, check_positive_int
from .distances import CENTRINGS, DISTANCES

__all__ = ["IMPLEMENTATIONS", "MIN_EPS", "Settings", "check_eps", "check_settings"]

#: Values of ``implementation=``: ``"auto"`` picks by the stored GPU measurements on a card they
#: cover (:mod:`cxlib.contextual.measured`), elsewhere ``"full"`` for small problems and
#: ``"blocked"`` above.
IMPLEMENTATIONS = ("auto", "full", "blocked", "fused")
#: The smallest ``eps`` taken. Below it the result depends on the rounding of the distances
#: (about 1e-7 in float32) more than on the features, and the gradients through Eq. 2, which
#: grow like 1 / (h eps), come near float32's range; 0 would divide by zero.
MIN_EPS = 1e-12


@dataclass(frozen=True)
class Settings:
    """Checked hyper-parameters shared by the contextual losses (see
    :func:`cxlib.contextual_loss` for each)."""

    band_width: float
    eps: float
    distance: str
    implementation: str
    block_size: int | None
    sample_positions: int | None
    check_finite: bool = True
    centring: str = "sample"


def check_settings(
    band_width: object,
    eps: object,
    distance: object,
    implementation: object,
    block_size: object,
    sample_positions: object,
    check_finite: object = True,
    centring: object = "sample",
) -> Settings:
    """Check every hyper-parameter; a clear ``TypeError`` or ``ValueError`` for a bad one.

    Args:
        band_width: h > 0.
        eps: epsilon >= :data:`MIN_EPS`.
        distance: one of :data:`cxlib.contextual.distances.DISTANCES`.
        implementation: one of :data:`IMPLEMENTATIONS`.
        block_size: an int >= 1, or ``None``.
        sample_positions: an int >= 1, or ``None``.
        check_finite: a bool.
        centring: one of :data:`cxlib.contextual.distances.CENTRINGS`.

    Returns:
        The checked :class:`Settings`.

    Example:
        >>> from cxlib.contextual.settings import check_settings
        >>> check_settings(0.5, 1e-5, "cosine", "auto", None, None).band_width
        0.5
    """
    return Settings(
        band_width=check_positive("band_width", band_width),
        eps=check_eps("eps", eps),
        distance=check_choice("distance", distance, DISTANCES),
        implementation=check_choice("implementation", implementation, IMPLEMENTATIONS),
        block_size=check_positive_int("block_size", block_size, allow_none=True),
        sample_positions=check_positive_int("sample_positions", sample_positions, allow_none=True),
        check_finite=check_flag("check_finite", check_finite),
        centring=check_choice("centring", centring, CENTRINGS),
    )


def check_eps(name: str, eps: object) -> float:
    """An eps of Eq. 2: a number >= :data:`MIN_EPS`, as float; ValueError/TypeError otherwise."""
    value = check_positive(name, eps)
    if value < MIN_EPS:
        raise ValueError(
            f"{name} must be >= {MIN_EPS:g} (smaller values make the loss depend on the rounding "
            f"of the distances and its gradients overflow float32), got {eps!r}"
        )
    return value
