"""Optimise the pixels of an image against a loss, as the paper's denoising toy and style transfer do."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ._checks import check_choice, check_positive, check_positive_int, check_tensor

__all__ = ["OPTIMIZERS", "OptimizationResult", "optimize_image"]

#: Values of ``optimizer=``.
OPTIMIZERS = ("adam", "lbfgs")


@dataclass
class OptimizationResult:
    """What :func:`optimize_image` returns.

    Attributes:
        image: the optimised image, detached, in the value range.
        losses: the loss before each step (``losses[k]`` is the loss of the image after k steps).
        snapshots: (step, image) pairs taken every ``snapshot_every`` steps, first and last
            included.
        interrupted: True if the run was stopped with Ctrl-C (KeyboardInterrupt); the image is
            then the last one reached.
        seconds: wall-clock time of the optimisation.
    """

    image: torch.Tensor
    losses: list[float] = field(default_factory=list)
    snapshots: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0


def optimize_image(
    init: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    steps: int,
    lr: float,
    optimizer: str = "adam",
    value_range: tuple[float, float] = (0.0, 1.0),
    snapshot_every: int | None = None,
    callback: Callable[[int, torch.Tensor, float], None] | None = None,
    progress: bool = True,
    description: str = "optimising",
) -> OptimizationResult:
    """Minimise ``loss_fn(image)`` over the pixels of ``image``, starting from ``init``.

    After every step the pixels are clipped to ``value_range`` (projected gradient descent), so
    the result is always a valid image. With ``optimizer="adam"`` each step is one Adam update;
    with ``"lbfgs"`` each step is one L-BFGS iteration (its memory carries across steps). The run
    is deterministic on the CPU for a deterministic ``loss_fn``. Ctrl-C stops it and returns what
    it reached so far (``interrupted=True``).

    Args:
        init: the starting image, (B, C, H, W); it is not modified.
        loss_fn: maps the current image to a scalar loss.
        steps: number of optimiser steps.
        lr: learning rate (Adam) or step length (L-BFGS).
        optimizer: ``"adam"`` or ``"lbfgs"``.
        value_range: (low, high) the pixels are kept in.
        snapshot_every: keep a copy of the image every this many steps (``None``: no snapshots).
        callback: called as ``callback(step, image, loss)`` after every step.
        progress: show a tqdm progress bar with the loss.
        description: the progress bar's label.

    Returns:
        An :class:`OptimizationResult`.

    Example:
        >>> import torch, cxlib
        >>> target = torch.full((1, 3, 4, 4), 0.25)
        >>> result = cxlib.optimize_image(torch.zeros(1, 3, 4, 4),
        ...                               lambda x: cxlib.l2_loss(x, target),
        ...                               steps=200, lr=0.05, progress=False)
        >>> round(result.image.mean().item(), 3), len(result.losses)
        (0.25, 201)
    """
    init = check_tensor("init", init, ndim=4)
    steps = check_positive_int("steps", steps)
    lr = check_positive("lr", lr)
    optimizer = check_choice("optimizer", optimizer, OPTIMIZERS)
    snapshot_every = check_positive_int("snapshot_every", snapshot_every, allow_none=True)
    low, high = (float(v) for v in value_range)
    if not low < high:
        raise ValueError(f"value_range must be (low, high) with low < high, got {value_range!r}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")

    from tqdm.auto import tqdm

    image = init.detach().clone().clamp_(low, high).requires_grad_(True)
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam([image], lr=lr)
    else:
        opt = torch.optim.LBFGS([image], lr=lr, max_iter=1, history_size=20,
                                line_search_fn="strong_wolfe")

    def evaluate() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(image)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar tensor, got {loss!r}")
        loss.backward()
        return loss

    result = OptimizationResult(image=init.detach().clone())
    started = time.perf_counter()
    bar = tqdm(range(steps), desc=description, disable=not progress, leave=False)
    try:
        if snapshot_every is not None:
            result.snapshots.append((0, image.detach().clone()))
        for step in bar:
            loss = opt.step(evaluate) if optimizer == "lbfgs" else _adam_step(opt, evaluate)
            result.losses.append(float(loss.detach()))
            with torch.no_grad():
                image.clamp_(low, high)
            done = step + 1
            bar.set_postfix(loss=f"{result.losses[-1]:.4g}")
            if snapshot_every is not None and (done % snapshot_every == 0 or done == steps):
                result.snapshots.append((done, image.detach().clone()))
            if callback is not None:
                callback(done, image.detach(), result.losses[-1])
        with torch.no_grad():
            result.losses.append(float(loss_fn(image)))
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        bar.close()
    result.image = image.detach().clone()
    result.seconds = time.perf_counter() - started
    return result


def _adam_step(opt: torch.optim.Optimizer, evaluate: Callable[[], torch.Tensor]) -> torch.Tensor:
    loss = evaluate()
    opt.step()
    return loss.detach()
