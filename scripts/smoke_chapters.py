"""Run every chapter end to end at the smoke setting: the paper's sizes, networks, layers and
batch, with every loop cut to a few steps (``CXLIB_SETTING=smoke``), and record per chapter
whether it ran, how long it took, and its peak memory (the kernel's resident set, and on a GPU
the most CUDA memory torch allocated).

Usage:
    python scripts/smoke_chapters.py [book/04_denoising.ipynb ...] [--json record.json]
        [--gpu-memory-gib 15] [--budget SECONDS] [--executed DIR]

Each chapter runs in a fresh kernel of this Python, with the seeded random VGG19 weights where
the ImageNet ones are missing and a fresh folder for the training runs. ``--gpu-memory-gib``
holds each chapter to that much GPU memory (``torch.cuda.set_per_process_memory_fraction``),
e.g. 15 for a Colab T4. ``--budget`` stops starting chapters once that many seconds have passed
(those left are recorded as not run) and no cell runs past it; the record is rewritten before
and after every chapter, so a run stopped from outside keeps what it finished and names the
chapter it stopped in.
``--executed`` keeps each executed chapter there, to read its text as the smoke setting made it.
The exit status is 1 if any chapter failed or was not run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from colab_check import cell_timeouts  # noqa: E402  (the widget cells' short limit, and why)

# Cells added around each chapter: the memory cap first, the measurement last.
_CAP = """import torch
if torch.cuda.is_available():
    torch.cuda.set_per_process_memory_fraction(
        min(1.0, {gib} * 2**30 / torch.cuda.get_device_properties(0).total_memory))
"""
_MEASURE = """import json, resource, sys, torch
print("CXLIB_SMOKE " + json.dumps({
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
    "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
}))
"""


def _chapters() -> list[Path]:
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    return [ROOT / f"{f}.ipynb" for f in files if (ROOT / f"{f}.ipynb").is_file()]


def run_chapter(path: Path, *, gpu_memory_gib: float | None, timeout: int,
                executed: Path | None = None) -> dict:
    notebook = nbformat.read(path, as_version=4)
    if gpu_memory_gib is not None:
        notebook.cells.insert(0, nbformat.v4.new_code_cell(_CAP.format(gib=gpu_memory_gib)))
    notebook.cells.append(nbformat.v4.new_code_cell(_MEASURE))
    client = NotebookClient(notebook, timeout=timeout, timeout_func=cell_timeouts(timeout),
                            kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    started = time.perf_counter()
    record = {"chapter": path.stem}
    try:
        client.execute()
        record["status"] = "ok"
    except CellExecutionError as error:
        record["status"] = "failed"
        record["error"] = str(error).strip().splitlines()[-1][:500]
    except CellTimeoutError as error:  # its own limit: a widget cell's is shorter
        record["status"] = "stopped at a cell's time limit (not finished)"
        record["error"] = str(error).strip().splitlines()[0][:500]
    except DeadKernelError as error:  # e.g. killed for memory
        record["status"] = "failed"
        record["error"] = f"the kernel died: {error}"[:500]
    record["seconds"] = round(time.perf_counter() - started, 1)
    if executed is not None:
        executed.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, executed / path.name)
    for output in notebook.cells[-1].get("outputs", []):
        for line in output.get("text", "").splitlines():
            if line.startswith("CXLIB_SMOKE "):
                record.update(json.loads(line.removeprefix("CXLIB_SMOKE ")))
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--json", type=Path, help="write the record here")
    parser.add_argument("--gpu-memory-gib", type=float, default=None)
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for all the chapters together")
    parser.add_argument("--executed", type=Path, default=None,
                        help="write the executed chapters to this folder")
    args = parser.parse_args()
    os.environ.update({"CXLIB_SETTING": "smoke", "CXLIB_ALLOW_RANDOM_WEIGHTS": "1",
                       "CXLIB_RUNS_DIR": tempfile.mkdtemp(prefix="cxlib-smoke-runs-")})
    notebooks = [p.resolve() for p in args.notebooks] or _chapters()
    records: list[dict] = []
    started = time.perf_counter()
    for k, path in enumerate(notebooks):
        left = None if args.budget is None else args.budget - (time.perf_counter() - started)
        if left is not None and left <= 0:
            records.append({"chapter": path.stem, "status": "not run (budget spent)", "seconds": 0.0})
            _write(args, records)
            continue
        # Should the run be stopped from outside, the record already says what was under way.
        _write(args, records + [{"chapter": path.stem, "status": "started, not finished"}]
               + [{"chapter": p.stem, "status": "not run"} for p in notebooks[k + 1:]])
        timeout = args.timeout if left is None else min(args.timeout, max(1, math.ceil(left)))
        record = run_chapter(path, gpu_memory_gib=args.gpu_memory_gib, timeout=timeout,
                             executed=args.executed)
        records.append(record)
        _write(args, records)
        memory = f"peak RSS {record.get('peak_rss_mib', float('nan')):,.0f} MiB"
        if record.get("peak_cuda_mib") is not None:
            memory += f", peak CUDA {record['peak_cuda_mib']:,.0f} MiB"
        print(f"{record['chapter']:<28} {record['status']:<7} {record['seconds']:7.1f} s  {memory}"
              + (f"  {record['error']}" if "error" in record else ""), flush=True)
    total = sum(r["seconds"] for r in records)
    print(f"{len(records)} chapters at the smoke setting in {total:.0f} s;"
          f" {sum(r['status'] != 'ok' for r in records)} failed")
    return 0 if all(r["status"] == "ok" for r in records) else 1


def _write(args: argparse.Namespace, records: list[dict]) -> None:
    """The record so far, to --json (if given)."""
    if not args.json:
        return
    import torch

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "setting": "smoke", "date": datetime.date.today().isoformat(),
        "python": platform.python_version(), "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "gpu_memory_gib": args.gpu_memory_gib, "budget_s": args.budget, "chapters": records,
    }, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
