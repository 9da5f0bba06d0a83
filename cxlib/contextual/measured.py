"""What ``implementation="auto"`` knows from measurements: the stored GPU benchmarks as a table.

``python -m cxlib.gpu_check`` writes one benchmark record per card to ``data/benchmarks/``
(forward + backward of each path at a few sizes, time and peak memory). This module turns those
records into a table by device class, ``measured_paths.json`` beside it, which ships in the wheel
and is read once, the first time "auto" runs on a CUDA device. For a problem on a card of a class
the table covers, "auto" takes the path that was fastest at the measured size nearest to it
(in the work of one distance pass, B * Nx * N * C, on a log scale), among the paths that may run.
The records time the cosine distance; the table is used for cosine and l2 terms, whose paths
have the same matrix products, not for l1 (whose full path's backward holds B * N * Nx * C
numbers):

- ``"full"`` only while its N x N matrices (:data:`FULL_MATRICES_AT_PEAK` matrices of B * Nx * N
  entries per term, in the points' dtype) would take at most :data:`FULL_MEMORY_FRACTION` of the
  card's memory;
- ``"fused"`` only for one term with a fused distance, and only from measurements of the kernels
  as they are now: every record stores a hash of ``fused.py`` (:func:`fused_kernels_hash`), and a
  fused time measured on other kernels is not used. "auto" still runs the device check of
  :mod:`cxlib.contextual.fused_check` before its first fused call, and leaves the kernels if it
  fails;
- ``"blocked"`` always.

Where no record covers the card (and on the CPU), "auto" keeps its rule without measurements
(:func:`cxlib.contextual.paths.score_terms`). To add a card: run the GPU check on it, commit its
record, and rebuild the table with ``python scripts/build_auto_table.py``;
``tests/test_measured.py`` fails while the table and the records disagree.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FULL_MATRICES_AT_PEAK", "FULL_MEMORY_FRACTION", "MEASURED_DISTANCES", "MeasuredSize",
           "build_table", "device_class", "fused_kernels_hash", "load_table", "measured_choice"]

TABLE_PATH = Path(__file__).with_name("measured_paths.json")
#: How many float32 matrices of B * Nx * N entries the full path holds at its peak (forward and
#: backward): the stored H200 record's full path took 6,160 MiB at N = 16,384, 6.0 such matrices.
FULL_MATRICES_AT_PEAK = 8
#: The share of the card's memory that "auto" lets the full path take; above it, the paths of
#: O(N) memory (blocked, fused) are chosen even where the full one was faster.
FULL_MEMORY_FRACTION = 1 / 8
_PATHS = ("full", "blocked", "fused")
#: The distances whose terms "auto" chooses for from the table (see above).
MEASURED_DISTANCES = ("cosine", "l2")


@functools.lru_cache(maxsize=1)
def fused_kernels_hash() -> str | None:
    """The first 16 hex digits of the SHA-256 of ``fused.py``: which kernels a record measured
    (read once; ``None`` where the source cannot be read, and then no fused time counts)."""
    try:
        source = Path(__file__).with_name("fused.py").read_bytes()
    except OSError:
        return None
    return hashlib.sha256(source).hexdigest()[:16]


def device_class(name: str) -> str:
    """The class of a card from its name, as the table keys it: the first word made of capital
    letters and digits after the maker, e.g. ``"NVIDIA H100 80GB HBM3"`` -> ``"H100"``,
    ``"NVIDIA A100-SXM4-80GB"`` -> ``"A100"``, ``"Tesla T4"`` -> ``"T4"``; the whole name,
    upper-cased, when there is no such word."""
    for word in re.split(r"[\s_-]+", name):
        if re.fullmatch(r"[A-Z]+[0-9]+[A-Z]*", word) and word not in ("NVIDIA", "Tesla"):
            return word
    return name.strip().upper()


@dataclass(frozen=True)
class MeasuredSize:
    """One measured size of one card: the forward + backward time of each path that ran.

    Attributes:
        batch, positions, channels: B, N (= Nx) and C of the measurement.
        time_ms: milliseconds per path; a path that did not run (out of memory, skipped) is absent.
        fused_kernels: :func:`fused_kernels_hash` of the kernels measured, ``None`` if unknown.
    """

    batch: int
    positions: int
    channels: int
    time_ms: dict[str, float]
    fused_kernels: str | None

    @property
    def work(self) -> int:
        """B * Nx * N * C: the multiply-adds of one pass over the distances."""
        return self.batch * self.positions * self.positions * self.channels


def build_table(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The table from benchmark records (as ``cxlib.gpu_check`` writes them): for each device
    class, each measured size with the time of each path that ran. A newer record of the same
    class and size replaces an older one."""
    sizes: dict[str, dict[tuple[int, int, int], dict[str, Any]]] = {}
    for record in sorted(records, key=lambda r: str(r.get("date", ""))):
        per_class = sizes.setdefault(device_class(str(record["device"])), {})
        kernels = record.get("fused_kernels")
        for row in record["measurements"]:
            if row.get("status") != "ok" or not math.isfinite(row.get("time_ms", math.nan)):
                continue
            key = (int(row["batch"]), int(row["positions"]), int(row["channels"]))
            entry = per_class.get(key)
            # A newer record replaces an older one; a record of the same date on other kernels
            # too, so that a fused time never stands beside another record's kernels.
            if entry is None or (entry["date"], entry["fused_kernels"]) != (record.get("date"), kernels):
                entry = per_class[key] = {"batch": key[0], "positions": key[1], "channels": key[2],
                                          "date": record.get("date"), "time_ms": {},
                                          "fused_kernels": kernels}
            entry["time_ms"][row["implementation"]] = round(float(row["time_ms"]), 4)
    return {"about": "Built by python scripts/build_auto_table.py from data/benchmarks/*.json; "
                     "read by implementation='auto' (cxlib/contextual/measured.py).",
            "devices": {name: [per_class[key] for key in sorted(per_class)]
                        for name, per_class in sorted(sizes.items())}}


@functools.lru_cache(maxsize=1)
def load_table(path: Path = TABLE_PATH) -> dict[str, tuple[MeasuredSize, ...]]:
    """The packaged table, by device class (read once, then cached; empty where the file cannot
    be read, and then "auto" decides by size)."""
    try:
        table = json.loads(path.read_text())
    except OSError:
        return {}
    return {name: tuple(MeasuredSize(row["batch"], row["positions"], row["channels"],
                                     dict(row["time_ms"]), row.get("fused_kernels"))
                        for row in rows)
            for name, rows in table["devices"].items()}


def measured_choice(sizes: Sequence[MeasuredSize], *, batch: int, num_x: int, num_y: int,
                    channels: int, allowed: Iterable[str], kernels: str | None = None) -> str | None:
    """The path that was fastest at the measured size nearest to (B, Nx, N, C), among
    ``allowed``; ``None`` when no measured size has a time for any of them.

    Args:
        sizes: the card's measured sizes (:func:`load_table`).
        batch, num_x, num_y, channels: the problem.
        allowed: the paths that may run on it (see the module's notes).
        kernels: :func:`fused_kernels_hash` of the kernels installed; a fused time measured on
            other kernels (or on unknown ones) is not used.
    """
    allowed = set(allowed)
    if not allowed <= set(_PATHS):
        raise ValueError(f"allowed paths must be among {_PATHS}, got {sorted(allowed)}")
    work = max(batch * num_x * num_y * channels, 1)
    best: tuple[float, str] | None = None
    for size in sizes:
        times = {path: ms for path, ms in size.time_ms.items() if path in allowed
                 and (path != "fused" or (kernels is not None and size.fused_kernels == kernels))}
        if not times:
            continue
        distance = abs(math.log(work / size.work))
        if best is None or distance < best[0]:
            best = (distance, min(times, key=lambda path: times[path]))
    return None if best is None else best[1]


def full_fits(batch: int, num_x: int, num_y: int, total_memory_bytes: int, *,
              bytes_per_entry: int = 4, terms: int = 1) -> bool:
    """Whether the full path's matrices (:data:`FULL_MATRICES_AT_PEAK` per term, of B * Nx * N
    entries of ``bytes_per_entry`` bytes) would take at most :data:`FULL_MEMORY_FRACTION` of a
    card with this much memory."""
    needed = FULL_MATRICES_AT_PEAK * terms * bytes_per_entry * batch * num_x * num_y
    return needed <= FULL_MEMORY_FRACTION * total_memory_bytes
