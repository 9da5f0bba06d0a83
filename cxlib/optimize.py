"""Optimise the pixels of an image against a loss, as the paper's denoising toy and style transfer do."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
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
    lr: float | None = None,
    optimizer: str = "adam",
    value_range: tuple[float, float] = (0.0, 1.0),
    snapshot_every: int | None = None,
    callback: Callable[[int, torch.Tensor, float], None] | None = None,
    progress: bool = True,
    description: str = "optimising",
) -> OptimizationResult:
    """Minimise ``loss_fn(image)`` over the pixels of ``image``, starting from ``init``.

    The pixels always stay in ``value_range``, so the result is a valid image:

    - ``optimizer="adam"``: each step is one Adam update followed by clipping to the range
      (projected gradient descent).
    - ``optimizer="lbfgs"``: L-BFGS-B (SciPy's ``scipy.optimize.minimize``), which handles the
      bounds itself, so the result is the bounded optimum even where the unbounded optimum lies
      outside the range (clipping after plain L-BFGS steps is not: its curvature pairs come from
      steps the clipping undid). Each step is one L-BFGS-B iteration, with its line search; the
      pixels travel to the CPU in float64 once per evaluation. It stops before ``steps`` if it
      converges (the gradient, projected on the bounds, vanishes) or its line search fails.

    The run is deterministic on the CPU for a deterministic ``loss_fn``. Ctrl-C stops it and
    returns what it reached so far (``interrupted=True``).

    Args:
        init: the starting image, (B, C, H, W); it is not modified.
        loss_fn: maps the current image to a scalar loss.
        steps: number of optimiser steps (at most, for L-BFGS-B).
        lr: learning rate of Adam (required there); L-BFGS-B takes no ``lr``, its line search
            chooses each step.
        optimizer: ``"adam"`` or ``"lbfgs"``.
        value_range: (low, high) the pixels are kept in.
        snapshot_every: keep a copy of the image every this many steps (``None``: no snapshots).
        callback: called as ``callback(step, image, loss)`` after every step.
        progress: show a tqdm progress bar with the loss.
        description: the progress bar's label.

    Shape:
        - init: (B, C, H, W); the image that ``loss_fn`` receives has the same shape.

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
    optimizer = check_choice("optimizer", optimizer, OPTIMIZERS)
    if optimizer == "adam":
        if lr is None:
            raise ValueError("optimizer='adam' needs a learning rate: pass lr=<float > 0>")
        lr = check_positive("lr", lr)
    elif lr is not None:
        raise ValueError(
            f"optimizer='lbfgs' (L-BFGS-B) chooses its steps by line search and takes no lr, "
            f"got lr={lr!r}: pass lr=None"
        )
    snapshot_every = check_positive_int("snapshot_every", snapshot_every, allow_none=True)
    low, high = (float(v) for v in value_range)
    if not low < high:
        raise ValueError(f"value_range must be (low, high) with low < high, got {value_range!r}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")

    from tqdm.auto import tqdm

    image = init.detach().clone().clamp_(low, high).requires_grad_(True)
    result = OptimizationResult(image=init.detach().clone())
    started = time.perf_counter()
    bar = tqdm(total=steps, desc=description, disable=not progress, leave=False)

    def after_step(done: int, loss: float) -> None:
        result.losses.append(loss)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4g}")
        if snapshot_every is not None and (done % snapshot_every == 0 or done == steps):
            result.snapshots.append((done, image.detach().clone()))
        if callback is not None:
            callback(done, image.detach(), loss)

    try:
        if snapshot_every is not None:
            result.snapshots.append((0, image.detach().clone()))
        if optimizer == "adam":
            _run_adam(image, loss_fn, steps, lr, low, high, result, after_step)
        else:
            _run_lbfgsb(image, loss_fn, steps, low, high, result, after_step)
            done = len(result.losses) - 1
            if snapshot_every is not None and result.snapshots[-1][0] != done:
                # L-BFGS-B converged before ``steps``: the last snapshot is the result.
                result.snapshots.append((done, image.detach().clone()))
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        bar.close()
    result.image = image.detach().clone()
    result.seconds = time.perf_counter() - started
    return result


def _loss_and_gradient(image: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor]
                       ) -> float:
    """Evaluate ``loss_fn`` at ``image`` and leave its gradient in ``image.grad``."""
    image.grad = None
    loss = loss_fn(image)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar tensor, got {loss!r}")
    loss.backward()
    return float(loss.detach())


def _run_adam(image, loss_fn, steps, lr, low, high, result, after_step) -> None:
    opt = torch.optim.Adam([image], lr=lr)
    for step in range(steps):
        loss = _loss_and_gradient(image, loss_fn)
        opt.step()
        with torch.no_grad():
            image.clamp_(low, high)
        after_step(step + 1, loss)
    with torch.no_grad():
        result.losses.append(float(loss_fn(image)))


def _run_lbfgsb(image, loss_fn, steps, low, high, result, after_step) -> None:
    try:
        from scipy.optimize import Bounds, minimize
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("optimizer='lbfgs' needs SciPy: pip install scipy") from error

    # The last point evaluated and its loss: L-BFGS-B's iterate is normally the last point of
    # its line search, so the loss after a step is known without another evaluation.
    last = {"point": None, "loss": 0.0}
    start = image.detach().double().cpu().numpy().ravel()
    iterate = start

    def fun(point):
        with torch.no_grad():
            image.copy_(torch.from_numpy(point).view_as(image))
        loss = _loss_and_gradient(image, loss_fn)
        last["point"], last["loss"] = point.copy(), loss
        if not result.losses:  # the starting point, L-BFGS-B's first evaluation
            result.losses.append(loss)
        return loss, image.grad.detach().double().cpu().numpy().ravel()

    def iteration_done(point):
        nonlocal iterate
        if last["point"] is None or not np.array_equal(point, last["point"]):
            fun(point)
        iterate = point.copy()  # after the evaluation: an interrupted one keeps the old iterate
        with torch.no_grad():
            image.copy_(torch.from_numpy(point).view_as(image))
        after_step(len(result.losses), last["loss"])

    size = start.size
    try:
        minimize(fun, start, jac=True, method="L-BFGS-B",
                 bounds=Bounds(np.full(size, low), np.full(size, high)),
                 callback=iteration_done,
                 options={"maxiter": steps, "maxcor": 20, "ftol": 0.0, "gtol": 0.0,
                          "maxfun": 50 * steps + 50})
    finally:
        # ``image`` holds the last point evaluated, maybe a line-search trial: go back to the
        # last iterate, the image the losses describe.
        with torch.no_grad():
            image.copy_(torch.from_numpy(iterate).view_as(image))
