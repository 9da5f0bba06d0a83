"""A training loop that survives being killed: checkpoints written atomically, exact resumption.

:func:`train` runs Adam on a model for a number of steps. Each step's batch comes from a function
of the step number (see :class:`StepBatches`), so a resumed run sees the same batches as an
uninterrupted one; the checkpoint holds the model, the optimiser, the gradient scaler, the step,
the loss history and every random generator's state, and is written to a temporary file and then
renamed, so a run killed at any moment leaves the previous checkpoint intact. Checkpoints are
read with ``torch.load(..., weights_only=True)``.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in DistributedDataParallel, rank r
trains on the batches of steps ``step * world_size + r``, and only rank 0 writes files::

    torchrun --standalone --nproc_per_node=4 -m cxlib.apps animation --run-dir runs/animation
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ._checks import check_positive, check_positive_int

__all__ = ["CHECKPOINT_NAME", "StepBatches", "TrainResult", "load_checkpoint", "train"]

#: File name of the checkpoint inside the run directory.
CHECKPOINT_NAME = "checkpoint.pt"

LossFn = Callable[[nn.Module, Mapping[str, torch.Tensor]], "torch.Tensor | tuple[torch.Tensor, Mapping[str, float]]"]


class StepBatches:
    """The batch of step s: ``batch_size`` distinct items of a dataset drawn with a generator
    seeded by (seed, s), stacked. The same step always gives the same batch, which is what makes
    resumption exact.

    Args:
        dataset: any map-style dataset of tensors.
        batch_size: items per batch.
        seed: seed of the draws.

    Example:
        >>> import torch, cxlib
        >>> batches = cxlib.StepBatches(cxlib.StackedImages(torch.rand(10, 3, 4, 4)), 2, seed=0)
        >>> torch.equal(batches(5), batches(5)), batches(5).shape
        (True, torch.Size([2, 3, 4, 4]))
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, seed: int = 0) -> None:
        self.dataset = dataset
        self.batch_size = check_positive_int("batch_size", batch_size)
        if len(dataset) < self.batch_size:
            raise ValueError(f"the dataset has {len(dataset)} items, fewer than batch_size={batch_size}")
        self.seed = int(seed)

    def indices(self, step: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(step))
        return torch.randperm(len(self.dataset), generator=generator)[: self.batch_size]

    def __call__(self, step: int) -> torch.Tensor:
        return torch.stack([self.dataset[int(i)] for i in self.indices(step)])


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
    """

    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    samples: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    step: int = 0
    resumed_from: int = 0
    seconds: float = 0.0


def _rng_state() -> dict:
    numpy_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": numpy_state[0], "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
                  "pos": int(numpy_state[2]), "has_gauss": int(numpy_state[3]),
                  "cached": float(numpy_state[4])},
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_atomically(obj: Mapping, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`train` (``weights_only=True``: no code is run)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def train(
    model: nn.Module,
    loss_fn: LossFn,
    batch_fn: Callable[[int], Mapping[str, torch.Tensor]],
    *,
    steps: int,
    run_dir: str | Path,
    lr: float = 1e-4,
    sample_inputs: torch.Tensor | None = None,
    sample_every: int | None = None,
    checkpoint_every: int = 100,
    amp: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    callback: Callable[[int, Mapping[str, float]], None] | None = None,
    description: str = "training",
) -> TrainResult:
    """Train ``model`` with Adam for ``steps`` steps, resuming from ``run_dir`` if a checkpoint is
    there.

    Args:
        model: the network (its parameters are updated in place).
        loss_fn: ``loss_fn(model, batch)`` returns the loss, or (loss, dict of values to log).
        batch_fn: ``batch_fn(step)`` returns the batch of that step: a dict of tensors (moved to
            the device here). It must depend only on the step (see :class:`StepBatches`).
        steps: the total number of steps; a resumed run does the remaining ones.
        run_dir: where the checkpoint (``checkpoint.pt``) and sample grids (``samples/``) go.
        lr: Adam's learning rate (the paper: 1e-4).
        sample_inputs: inputs whose outputs are saved as an image grid every ``sample_every``
            steps (and at the last step).
        sample_every: steps between sample grids; ``None`` for none.
        checkpoint_every: steps between checkpoints (one is always written at the end).
        amp: mixed precision (float16 with a gradient scaler on CUDA, bfloat16 on the CPU).
        device: where to train; default CUDA if present (under torchrun, the local rank's GPU).
        progress: show a tqdm progress bar with the loss.
        callback: called as ``callback(step, logged values)`` after every step.
        description: the progress bar's label.

    Returns:
        A :class:`TrainResult`.
    """
    steps = check_positive_int("steps", steps)
    lr = check_positive("lr", lr)
    checkpoint_every = check_positive_int("checkpoint_every", checkpoint_every)
    sample_every = check_positive_int("sample_every", sample_every, allow_none=True)
    rank, world = _distributed()
    if device is None:
        if torch.cuda.is_available():
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        else:
            device = torch.device("cpu")
    device = torch.device(device)
    run_dir = Path(run_dir)
    checkpoint_path = run_dir / CHECKPOINT_NAME
    if rank == 0:
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)

    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    use_scaler = amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    result = TrainResult(model=model)
    if checkpoint_path.is_file():
        state = load_checkpoint(checkpoint_path, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        result.history = [dict(h) for h in state["history"]]
        result.step = result.resumed_from = int(state["step"])
        _set_rng_state(state["rng"])

    wrapped = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def save() -> None:
        if rank == 0:
            _save_atomically({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(), "step": result.step, "history": result.history,
                "rng": _rng_state(),
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

    from tqdm.auto import tqdm

    started = time.perf_counter()
    model.train()
    bar = tqdm(total=steps, initial=result.step, desc=description, disable=not progress or rank != 0,
               leave=False)
    try:
        while result.step < steps:
            batch = {k: v.to(device) for k, v in batch_fn(result.step * world + rank).items()}
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp):
                out = loss_fn(wrapped, batch)
            loss, logged = out if isinstance(out, tuple) else (out, {})
            scaler.scale(loss.float()).backward()
            scaler.step(optimizer)
            scaler.update()
            result.step += 1
            values = {"loss": float(loss.detach()), **{k: float(v) for k, v in logged.items()}}
            result.history.append(values)
            bar.update(1)
            bar.set_postfix(loss=f"{values['loss']:.4g}")
            if sample_every is not None and (result.step % sample_every == 0 or result.step == steps):
                sample()
            if result.step % checkpoint_every == 0 or result.step == steps:
                save()
            if callback is not None:
                callback(result.step, values)
    finally:
        bar.close()
    result.seconds = time.perf_counter() - started
    return result
