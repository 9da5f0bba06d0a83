"""A training loop that survives being killed: checkpoints written atomically, exact resumption.

:func:`train` runs Adam on a model for a number of steps. Each step's batch comes from a function
of the step number (see :class:`cxlib.training.StepBatches`), so a resumed run sees the same batches as an
uninterrupted one; the checkpoint holds the model, the optimiser, the gradient scaler, the step,
the loss history and every random generator's state, and is written to a temporary file and then
renamed, so a run killed at any moment leaves the previous checkpoint intact. Checkpoints are
read on the CPU with ``torch.load(..., weights_only=True)`` (whatever device the run trains on:
the random generators' states must stay CPU tensors).

An objective may carry values measured once at the start of a run (the scales that make a
baseline's terms comparable): if ``loss_fn`` has ``calibrate(model, batch)``, ``calibrated``,
``calibration_state()`` and ``load_calibration_state(state)``, :func:`train` calibrates it on
the first batch before the first step, broadcasts the values from rank 0, stores them in the
checkpoint, and restores them when a run resumes, so that every rank and every resumed run
optimises the same objective.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in DistributedDataParallel, rank r
trains on the batches of steps ``step * world_size + r``, and only rank 0 writes files::

    torchrun --standalone --nproc_per_node=4 -m cxlib.training animation --run-dir runs/animation
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any, cast
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .._checks import check_positive, check_positive_int
from .checkpoint import CHECKPOINT_NAME, _rng_state, _save_atomically, _set_rng_state, load_checkpoint

__all__ = ["TrainResult", "measure_step_time", "train", "training_device"]

LossFn = Callable[[nn.Module, Mapping[str, torch.Tensor]], "torch.Tensor | tuple[torch.Tensor, Mapping[str, float]]"]


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the trained model (unwrapped from DistributedDataParallel).
        history: one dict of logged values per step (``"loss"`` and what the loss function
            returned), for all steps so far, resumed ones included.
        samples: (step, grid image (3, H, W)) every ``sample_every`` steps of this run.
        step: the last step done.
        resumed_from: the step the run resumed from (0 for a fresh run).
        seconds: wall-clock time of this run.
        finished: whether all ``steps`` are done (False when ``time_limit`` stopped the run
            early; running :func:`train` again continues it).
    """

    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    samples: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    step: int = 0
    resumed_from: int = 0
    seconds: float = 0.0
    finished: bool = False


def training_device(device: str | torch.device | None = None) -> torch.device:
    """The device :func:`train` uses: ``device`` if given, else CUDA if present, else the CPU.

    A CUDA device without an index means the local rank's GPU (``LOCAL_RANK``, set by torchrun;
    0 otherwise), so that under torchrun every rank trains on its own GPU.

    Args:
        device: the device asked for, or ``None``.

    Returns:
        The device to train on.

    Example:
        >>> from cxlib.training import training_device
        >>> training_device("cpu")
        device(type='cpu')
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def _distributed(device: torch.device) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        # train() has made the rank's GPU the current device before: NCCL binds to it.
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _check_betas(betas: object) -> tuple[float, float]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"betas must be a pair of numbers in [0, 1), got {betas!r}")
    values = (float(betas[0]), float(betas[1]))
    if not all(0.0 <= v < 1.0 for v in values):
        raise ValueError(f"betas must be in [0, 1), got {values}")
    return values


def _restore_scaler(scaler: torch.amp.GradScaler, saved: Mapping) -> None:
    """Load a gradient scaler's state unless the run was saved without one (or runs without one
    now): a run may be resumed with or without ``amp`` whatever it was started with."""
    if saved and scaler.is_enabled():
        scaler.load_state_dict(cast("dict[str, Any]", saved))


def _calibrate(loss_fn: Any, model: nn.Module, first_batch: Callable[[], Mapping[str, torch.Tensor]],
               saved: Mapping | None, device: torch.device, world: int) -> None:
    """Give a calibrated objective its values: from the checkpoint when resuming, else measured on
    the first batch, then the same on every rank (rank 0's)."""
    if not hasattr(loss_fn, "calibrate"):
        return
    if saved:
        loss_fn.load_calibration_state(saved)
    if not loss_fn.calibrated:
        loss_fn.calibrate(model, first_batch())
    if world > 1:
        import torch.distributed as dist

        state = {}
        for name, value in loss_fn.calibration_state().items():
            value = value.to(device)
            dist.broadcast(value, src=0)
            state[name] = value.cpu()
        loss_fn.load_calibration_state(state)


def _prepare(model: nn.Module, loss_fn: object, batch_fn: Callable[[int], Mapping[str, torch.Tensor]],
             device: torch.device, lr: float, amp: bool, betas: tuple[float, float] = (0.9, 0.999)):
    """The model and the objective on the device, Adam, the gradient scaler (used by AMP on CUDA
    only: bfloat16 on the CPU needs none), and the batch of a step on the device."""
    model = model.to(device)
    if isinstance(loss_fn, nn.Module):
        loss_fn.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=betas)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")

    def batch_of(step: int) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in batch_fn(step).items()}

    return model, optimizer, scaler, batch_of


def _train_step(wrapped: nn.Module, loss_fn: Callable, batch: Mapping[str, torch.Tensor],
                optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                device: torch.device, amp: bool) -> tuple[torch.Tensor, Mapping[str, torch.Tensor | float]]:
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp):
        out = loss_fn(wrapped, batch)
    loss, logged = out if isinstance(out, tuple) else (out, {})
    scaler.scale(loss.float()).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss, logged


def measure_step_time(
    model: nn.Module,
    loss_fn: LossFn,
    batch_fn: Callable[[int], Mapping[str, torch.Tensor]],
    *,
    steps: int = 3,
    lr: float = 1e-4,
    betas: tuple[float, float] = (0.9, 0.999),
    amp: bool = False,
    device: str | torch.device | None = None,
) -> float:
    """Seconds per training step of :func:`train` with these arguments, measured on copies.

    One warm-up step, then ``steps`` timed ones, on a copy of the model and of the objective with
    a fresh optimiser: the model, the objective and the random generators are left as they were.
    Chapters use it to say what a long run will cost before starting it.

    Args:
        model: the network (left untouched).
        loss_fn: the objective, as for :func:`train` (left untouched).
        batch_fn: the batch of a step, as for :func:`train`.
        steps: timed steps after the warm-up one.
        lr: Adam's learning rate.
        betas: Adam's betas.
        amp: mixed precision, as for :func:`train`.
        device: where to measure, as for :func:`train`.

    Shape:
        - ``batch_fn(step)``: a dict of tensors whose first dimension is the batch.

    Returns:
        The mean seconds per step (CUDA work included: the device is synchronised).

    Example:
        >>> import torch
        >>> from cxlib.training import measure_step_time
        >>> net = torch.nn.Conv2d(3, 3, 3, padding=1)
        >>> seconds = measure_step_time(net, lambda m, b: m(b["x"]).square().mean(),
        ...                             lambda s: {"x": torch.rand(2, 3, 8, 8)}, steps=2)
        >>> 0 < seconds < 10
        True
    """
    import copy

    steps = check_positive_int("steps", steps)
    betas = _check_betas(betas)
    device = training_device(device)
    forked = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked, device_type=device.type):
        loss_fn = copy.deepcopy(loss_fn)
        model, optimizer, scaler, batch = _prepare(copy.deepcopy(model).train(), loss_fn,
                                                   batch_fn, device, lr, amp, betas)
        _calibrate(loss_fn, model, lambda: batch(0), None, device, 1)
        started = 0.0
        for step in range(steps + 1):
            if step == 1:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                started = time.perf_counter()
            _train_step(model, loss_fn, batch(step), optimizer, scaler, device, amp)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - started) / steps


def train(
    model: nn.Module,
    loss_fn: LossFn,
    batch_fn: Callable[[int], Mapping[str, torch.Tensor]],
    *,
    steps: int,
    run_dir: str | Path,
    lr: float = 1e-4,
    betas: tuple[float, float] = (0.9, 0.999),
    sample_inputs: torch.Tensor | None = None,
    sample_every: int | None = None,
    checkpoint_every: int = 100,
    amp: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    callback: Callable[[int, Mapping[str, float]], None] | None = None,
    description: str = "training",
    time_limit: float | None = None,
) -> TrainResult:
    """Train ``model`` with Adam for ``steps`` steps, resuming from ``run_dir`` if a checkpoint is
    there.

    Args:
        model: the network (its parameters are updated in place).
        loss_fn: ``loss_fn(model, batch)`` returns the loss, or (loss, dict of values to log).
        batch_fn: ``batch_fn(step)`` returns the batch of that step: a dict of tensors (moved to
            the device here). It must depend only on the step (see :class:`cxlib.training.StepBatches`).
        steps: the total number of steps; a resumed run does the remaining ones.
        run_dir: where the checkpoint (``checkpoint.pt``) and sample grids (``samples/``) go.
        lr: Adam's learning rate (the paper: 1e-4); a resumed run takes this one, not the saved
            one.
        betas: Adam's betas (CycleGAN's authors: (0.5, 0.999)); likewise.
        sample_inputs: inputs whose outputs are saved as an image grid every ``sample_every``
            steps (and at the last step).
        sample_every: steps between sample grids; ``None`` for none.
        checkpoint_every: steps between checkpoints (one is always written at the end).
        amp: mixed precision (float16 with a gradient scaler on CUDA, bfloat16 on the CPU).
        device: where to train; default CUDA if present; a CUDA device without an index is the
            local rank's GPU (see :func:`training_device`).
        progress: show a tqdm progress bar with the loss.
        callback: called as ``callback(step, logged values)`` after every step.
        description: the progress bar's label.
        time_limit: stop after the first step that ends more than this many seconds after the
            start (a checkpoint is written): a notebook cell stays within a time budget, and
            running :func:`train` again continues. ``None``: no limit.

    Shape:
        - ``batch_fn(step)``: a dict of tensors whose first dimension is the batch; under
          torchrun, each rank's own batch.
        - ``sample_inputs``: (S, C, H, W), the model's input.

    Returns:
        A :class:`TrainResult`.

    Example:
        >>> import tempfile, torch
        >>> from cxlib.training import train
        >>> net = torch.nn.Conv2d(3, 3, 3, padding=1)
        >>> target = torch.rand(2, 3, 8, 8)
        >>> run = tempfile.mkdtemp()
        >>> result = train(net, lambda m, b: (m(b["x"]) - target).square().mean(),
        ...                lambda s: {"x": target}, steps=4, run_dir=run, lr=1e-2,
        ...                progress=False, device="cpu")
        >>> result.step, result.history[-1]["loss"] < result.history[0]["loss"]
        (4, True)
        >>> train(net, lambda m, b: (m(b["x"]) - target).square().mean(),  # resumes: done
        ...       lambda s: {"x": target}, steps=4, run_dir=run, progress=False,
        ...       device="cpu").resumed_from
        4
    """
    steps = check_positive_int("steps", steps)
    lr = check_positive("lr", lr)
    checkpoint_every = check_positive_int("checkpoint_every", checkpoint_every)
    sample_every = check_positive_int("sample_every", sample_every, allow_none=True)
    if time_limit is not None:
        time_limit = check_positive("time_limit", time_limit)
    device = training_device(device)
    if device.type == "cuda":
        # NCCL, Triton and every allocation without an explicit device use the current device.
        torch.cuda.set_device(device)
    rank, world = _distributed(device)
    run_dir = Path(run_dir)
    checkpoint_path = run_dir / CHECKPOINT_NAME
    if rank == 0:
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)

    betas = _check_betas(betas)
    model, optimizer, scaler, batch_of = _prepare(model, loss_fn, batch_fn, device, lr, amp, betas)
    result = TrainResult(model=model)
    saved_objective = None
    if checkpoint_path.is_file():
        state = load_checkpoint(checkpoint_path)  # on the CPU: see load_checkpoint
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])  # moves its state to the parameters' device
        for group in optimizer.param_groups:  # the arguments of this call, not the saved ones
            group["lr"], group["betas"] = lr, betas
        _restore_scaler(scaler, state["scaler"])
        result.history = [dict(h) for h in state["history"]]
        result.step = result.resumed_from = int(state["step"])
        saved_objective = state.get("objective")
        _set_rng_state(state["rng"])
    _calibrate(loss_fn, model, lambda: batch_of(0), saved_objective, device, world)

    wrapped = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # A model may keep per-rank state in buffers (CycleGAN's history pools) and say so.
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                          broadcast_buffers=getattr(model, "broadcast_buffers", True))

    def save() -> None:
        if rank == 0:
            _save_atomically({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(), "amp": bool(amp), "step": result.step,
                "history": result.history, "rng": _rng_state(),
                "objective": cast(Any, loss_fn).calibration_state() if hasattr(loss_fn, "calibrate") else {},
            }, checkpoint_path)
        if world > 1:
            torch.distributed.barrier()

    def sample() -> None:
        if rank != 0 or sample_inputs is None:
            return
        from torchvision.utils import make_grid, save_image

        was_training = model.training
        model.eval()
        with torch.no_grad():
            grid = make_grid(model(sample_inputs.to(device)).float().clamp(0, 1).cpu(),
                             nrow=min(8, sample_inputs.shape[0]), padding=2, pad_value=1.0)
        model.train(was_training)
        save_image(grid, run_dir / "samples" / f"step_{result.step:07d}.png")
        result.samples.append((result.step, grid))

    def out_of_time() -> bool:
        if time_limit is None:
            return False
        over = torch.tensor(float(time.perf_counter() - started > time_limit), device=device)
        if world > 1:  # every rank stops at the same step: rank 0 decides
            torch.distributed.broadcast(over, src=0)
        return bool(over.item())

    from tqdm.auto import tqdm

    started = time.perf_counter()
    model.train()
    bar = tqdm(total=steps, initial=result.step, desc=description, disable=not progress or rank != 0,
               leave=False)
    try:
        while result.step < steps:
            loss, logged = _train_step(wrapped, loss_fn, batch_of(result.step * world + rank),
                                       optimizer, scaler, device, amp)
            result.step += 1
            values = {"loss": float(loss.detach()), **{k: float(v) for k, v in logged.items()}}
            result.history.append(values)
            bar.update(1)
            bar.set_postfix(loss=f"{values['loss']:.4g}")
            stop = result.step < steps and out_of_time()
            if sample_every is not None and (result.step % sample_every == 0 or result.step == steps):
                sample()
            if result.step % checkpoint_every == 0 or result.step == steps or stop:
                save()
            if callback is not None:
                callback(result.step, values)
            if stop:
                break
    finally:
        bar.close()
    result.seconds = time.perf_counter() - started
    result.finished = result.step >= steps
    return result
