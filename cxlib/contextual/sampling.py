"""Feature maps as point sets, checked, with the authors' optional random subset of positions."""

from __future__ import annotations

import contextlib

import torch

from .._checks import check_feature_pair
from .distances import as_point_sets
from .precision import in_computation_dtype
from .settings import Settings

__all__ = ["outside_autocast", "sampled_point_sets"]



def outside_autocast(x: torch.Tensor) -> contextlib.AbstractContextManager[None]:
    """A context in which autocast is off on ``x``'s device: the loss's matrix products run in
    the precision of its points (float32 for half-precision features, see
    :func:`sampled_point_sets`), not in float16, inside a caller's autocast region too."""
    device_type = x.device.type if isinstance(x, torch.Tensor) else "cpu"  # bad input: checked later
    if not torch.amp.is_autocast_available(device_type):  # e.g. meta tensors: nothing to turn off
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)


def _random_positions(
    num: int, count: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor | None:
    """``count`` distinct positions out of ``num`` at random, or ``None`` if all are kept."""
    if num <= count:
        return None
    return torch.randperm(num, generator=generator)[:count].to(device)


def sampled_point_sets(
    x: torch.Tensor, y: torch.Tensor, settings: Settings, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Check two feature maps and return them as point sets, with the positions kept.

    Half precision is raised to float32. With ``settings.sample_positions``, only a random subset
    of positions is kept, as the authors' code does: the same positions for every sample of the
    batch, and in both maps when they have the same size.

    Args:
        x: generated features.
        y: target features.
        settings: the checked hyper-parameters.
        generator: CPU random generator of the positions, or ``None`` for torch's global one.

    Shape:
        - x: (B, C, Hx, Wx); y: (B, C, Hy, Wy).
        - Output: points (B, Nx, C) and (B, N, C), and the kept indices of x and y (``None``:
          all kept).

    Returns:
        ``(x_points, y_points, x_index, y_index)``.

    Example:
        >>> import contextlib

import torch
        >>> from cxlib.contextual.settings import check_settings
        >>> from cxlib.contextual.sampling import sampled_point_sets
        >>> s = check_settings(0.5, 1e-5, "cosine", "auto", None, 4)
        >>> xp, yp, xi, yi = sampled_point_sets(torch.rand(1, 3, 3, 3), torch.rand(1, 3, 3, 3),
        ...                                     s, torch.Generator().manual_seed(0))
        >>> xp.shape, bool((xi == yi).all())
        (torch.Size([1, 4, 3]), True)
    """
    x, y = check_feature_pair(x, y, finite=settings.check_finite)
    x, y = in_computation_dtype(x, y)  # Eq. 2 needs float32 (cxlib.contextual.precision)
    x_points, y_points = as_point_sets(x), as_point_sets(y)
    x_index = y_index = None
    if settings.sample_positions is not None:
        count, num_x, num_y = settings.sample_positions, x_points.shape[1], y_points.shape[1]
        y_index = _random_positions(num_y, count, generator, y.device)
        x_index = y_index if num_x == num_y else _random_positions(num_x, count, generator, x.device)
        if y_index is not None:
            y_points = y_points[:, y_index]
        if x_index is not None:
            x_points = x_points[:, x_index]
    return x_points, y_points, x_index, y_index
