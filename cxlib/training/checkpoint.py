"""Checkpoints of a training run: written atomically, read without running code.

A checkpoint is a dict saved with ``torch.save`` to ``<run_dir>/checkpoint.pt`` through a
temporary file and a rename, so a run killed at any moment leaves the previous checkpoint
intact; it is read with ``weights_only=True``. Besides the model and optimiser it holds every
random generator's state (torch, CUDA, NumPy, Python), which is what makes a resumed run
continue exactly as an uninterrupted one.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from typing import Any
from pathlib import Path

import numpy as np
import torch

__all__ = ["CHECKPOINT_NAME", "checkpoint_step", "load_checkpoint"]

#: File name of the checkpoint inside the run directory.
CHECKPOINT_NAME = "checkpoint.pt"


def _rng_state() -> dict:
    numpy_state: Any = np.random.get_state()  # the legacy tuple form
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
        # A run saved on more GPUs than this machine has (Colab's one, say) resumes too: the
        # generators of the GPUs that are here get their saved states.
        for index, saved in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(saved, index)


def _save_atomically(obj: Mapping, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`cxlib.training.train` (``weights_only=True``: no code
    is run).

    On the CPU by default: ``train`` reads it so and moves what belongs on the device itself
    (the random generators' states must stay CPU tensors).

    Args:
        path: the checkpoint file.
        map_location: where to put its tensors.

    Returns:
        The checkpoint's dict: ``model``, ``optimizer``, ``scaler``, ``amp``, ``step``,
        ``history``, ``rng`` and ``objective``.

    Example:
        >>> import tempfile, pathlib, torch
        >>> from cxlib.training import load_checkpoint
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "checkpoint.pt"
        >>> torch.save({"step": 3}, path)
        >>> load_checkpoint(path)["step"]
        3
    """
    return torch.load(path, map_location=map_location, weights_only=True)


def checkpoint_step(run_dir: str | Path) -> int:
    """The step of the checkpoint in ``run_dir``, 0 if there is none: how far a run has come.

    Args:
        run_dir: the run's folder.

    Returns:
        The last step saved, or 0.

    Example:
        >>> from cxlib.training import checkpoint_step
        >>> checkpoint_step("no/such/run")
        0
    """
    path = Path(run_dir) / CHECKPOINT_NAME
    return int(load_checkpoint(path)["step"]) if path.is_file() else 0
