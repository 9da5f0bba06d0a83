"""Time and peak memory of the contextual loss's implementations, side by side, for growing N.

The implementations are ``full`` (every (N, N) matrix held, as the public ports do), ``blocked``
(rows in blocks, O(block x N) memory) and ``fused`` (Triton kernels streaming over tiles, O(N)
memory; CUDA only).

Run ``python -m cxlib.benchmark --help``. Each measurement runs in fresh Python processes, so that
the peak memory of one path is not hidden by another's.

- Memory: the peak of the memory held by tensors during one pass, above what was held before it
  (the inputs). On CUDA, ``torch.cuda.max_memory_allocated``; on the CPU, the memory timeline of
  the PyTorch profiler (every allocation and free of one pass), which counts tensors exactly,
  unlike the process's resident set (which also holds the allocator's cache and loaded code).
- Time: the median of ``--repeats`` forward + backward passes (gradient with respect to the
  generated features) after one warm-up pass, in a process with the default allocator.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Any
from collections.abc import Sequence
from dataclasses import asdict, dataclass

__all__ = ["Measurement", "measure", "plot_measurements", "run_benchmark"]

# Full-matrix path: about this many (B, Nx, N) float32 matrices alive at its peak (measured).
_FULL_MATRICES_AT_PEAK = 8


@dataclass
class Measurement:
    """One measured configuration; ``status`` is ``"ok"``, ``"out of memory"`` or ``"skipped"``."""

    implementation: str
    positions: int
    channels: int
    batch: int
    device: str
    status: str
    time_ms: float = math.nan
    peak_mib: float = math.nan
    loss: float = math.nan  # the loss of the measured pass: every path must give the same
    note: str = ""


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _cpu_tensor_peak_mib(run) -> float:
    """Peak MiB held by CPU tensors while ``run()`` runs, above what was held when it started,
    from the PyTorch profiler's memory timeline."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        run()
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(torch.device("cpu"))
    totals = [sum(row) for row in sizes]
    return (max(totals) - totals[0]) / 2**20 if totals else 0.0


def _worker(task: str, implementation: str, positions: int, channels: int, batch: int,
            device: str, repeats: int, seed: int) -> Measurement:
    """Measure one configuration in this process."""
    import torch

    import cxlib

    side = math.isqrt(positions)
    if side * side != positions:
        raise ValueError(f"positions must be a square number, got {positions}")
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, side, side, generator=generator).to(device).requires_grad_()
    y = torch.randn(batch, channels, side, side, generator=generator).to(device)

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        loss = cxlib.contextual_loss(x, y, implementation=implementation)
        loss.backward()
        x.grad = None
        return float(loss.detach())

    # A small pass first, so that loading code and thread pools is not counted as memory.
    small = torch.randn(batch, channels, 8, 8, generator=generator).to(device)
    step(small.clone().requires_grad_(), small)
    del small
    try:
        value = step(x, y)
        if task == "memory" and not device.startswith("cuda"):
            peak = _cpu_tensor_peak_mib(lambda: step(x, y))
        else:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                baseline = float(torch.cuda.memory_allocated())
            step(x, y)
            _sync(device)
            peak = (torch.cuda.max_memory_allocated() - baseline) / 2**20 if device.startswith("cuda") else math.nan
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step(x, y)
            _sync(device)
            times.append((time.perf_counter() - start) * 1e3)
    except torch.OutOfMemoryError:
        return Measurement(implementation, positions, channels, batch, device, "out of memory")
    return Measurement(
        implementation, positions, channels, batch, device, "ok",
        time_ms=statistics.median(times) if times else math.nan, peak_mib=peak, loss=value,
    )


def measure(implementation: str, positions: int, channels: int, *, batch: int = 1,
            device: str = "cpu", repeats: int = 5, seed: int = 0,
            memory_limit_gib: float | None = None) -> Measurement:
    """Measure one configuration in a fresh Python process.

    Args:
        implementation: ``"full"`` or ``"blocked"`` (see :func:`cxlib.contextual_loss`).
        positions: N, the positions of each (square) feature map.
        channels: C.
        batch: B.
        device: ``"cpu"`` or ``"cuda"``.
        repeats: timed passes after the warm-up pass.
        seed: seed of the random features.
        memory_limit_gib: skip the full path when its matrices alone would need more than this.

    Returns:
        A :class:`Measurement`.
    """
    if implementation == "full" and memory_limit_gib is not None:
        need_gib = _FULL_MATRICES_AT_PEAK * batch * positions**2 * 4 / 2**30
        if need_gib > memory_limit_gib:
            return Measurement(implementation, positions, channels, batch, device, "skipped",
                               note=f"needs about {need_gib:.0f} GiB")
    if device.startswith("cuda"):
        return _run_worker("both", implementation, positions, channels, batch, device, repeats, seed)
    # On the CPU the profiler that counts memory slows the pass down: time it separately.
    timed = _run_worker("time", implementation, positions, channels, batch, device, repeats, seed)
    if timed.status != "ok":
        return timed
    sized = _run_worker("memory", implementation, positions, channels, batch, device, 0, seed)
    timed.peak_mib = sized.peak_mib
    return timed


def _run_worker(task: str, implementation: str, positions: int, channels: int, batch: int,
                device: str, repeats: int, seed: int) -> Measurement:
    env = dict(os.environ)
    command = [
        sys.executable, "-m", "cxlib.benchmark", "--worker", task,
        "--implementations", implementation, "--sizes", str(positions),
        "--channels", str(channels), "--batch", str(batch), "--device", device,
        "--repeats", str(repeats), "--seed", str(seed),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        # A process killed for memory (SIGKILL) or a CUDA failure outside the allocator.
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        status = "out of memory" if done.returncode in (-9, 137) else "failed"
        return Measurement(implementation, positions, channels, batch, device, status,
                           note=tail[0][:80])
    return Measurement(**json.loads(done.stdout.strip().splitlines()[-1]))


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}x" if reference > 0 else "-"


def _format_table(rows: Sequence[Measurement], implementations: Sequence[str]) -> str:
    by_key = {(m.positions, m.implementation): m for m in rows}
    sizes = sorted({m.positions for m in rows})
    header = ["N", "C"]
    for name in implementations:
        header += [f"{name} ms", f"{name} MiB"]
    if "full" in implementations:
        for name in implementations:
            if name != "full":
                header += [f"{name}/full time", f"{name}/full memory"]
    lines = [header]
    for size in sizes:
        first = next(m for m in rows if m.positions == size)
        line = [f"{size:,}", str(first.channels)]
        for name in implementations:
            m = by_key.get((size, name))
            if m is None or m.status != "ok":
                line += [m.status if m else "-", m.note if m else ""]
            else:
                mib = f"{m.peak_mib:.2f}" if m.peak_mib < 10 else f"{m.peak_mib:.0f}"
                line += [f"{m.time_ms:.1f}", mib]
        full = by_key.get((size, "full"))
        if "full" in implementations:
            for name in implementations:
                if name == "full":
                    continue
                other = by_key.get((size, name))
                if full and other and full.status == other.status == "ok":
                    line += [_ratio(other.time_ms, full.time_ms),
                             _ratio(other.peak_mib, full.peak_mib)]
                else:
                    line += ["-", "-"]
        lines.append(line)
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in lines)


def run_benchmark(sizes: Sequence[int], channels: int, implementations: Sequence[str], *,
                  batch: int = 1, device: str = "cpu", repeats: int = 5,
                  memory_limit_gib: float | None = None, progress: bool = True
                  ) -> list[Measurement]:
    """Measure every implementation at every size; a tqdm bar shows progress."""
    from tqdm.auto import tqdm

    jobs = [(size, name) for size in sizes for name in implementations]
    results = []
    for size, name in tqdm(jobs, desc="benchmark", disable=not progress):
        results.append(measure(name, size, channels, batch=batch, device=device,
                               repeats=repeats, memory_limit_gib=memory_limit_gib))
    return results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cxlib.benchmark",
        description="Time and peak memory of the contextual loss (forward + backward), "
        "full-matrix against blocked, for growing numbers of positions N.",
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2304, 4096, 9216],
                        help="N, positions per map (square numbers); default: %(default)s")
    parser.add_argument("--channels", type=int, default=256, help="C; default: %(default)s")
    parser.add_argument("--batch", type=int, default=1, help="B; default: %(default)s")
    parser.add_argument("--implementations", nargs="+", default=None,
                        help="default: full blocked, and fused on CUDA")
    parser.add_argument("--device", default=None, help="cpu or cuda; default: cuda if present")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes; default: %(default)s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-limit-gib", type=float, default=None,
                        help="skip full-path sizes whose matrices need more than this "
                        "(default: half the RAM on the CPU, none on CUDA)")
    parser.add_argument("--json", default=None, help="also write the measurements to this file")
    parser.add_argument("--plot", default=None, help="also save a plot of time and memory against N")
    parser.add_argument("--worker", choices=["time", "memory", "both"], help=argparse.SUPPRESS)
    return parser


def _total_ram_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        m = _worker(args.worker, args.implementations[0], args.sizes[0], args.channels,
                    args.batch, args.device, args.repeats, args.seed)
        print(json.dumps(asdict(m)))
        return 0

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.implementations is None:
        args.implementations = ["full", "blocked"] + (["fused"] if device.startswith("cuda") else [])
    limit = args.memory_limit_gib
    if limit is None and device == "cpu":
        limit = _total_ram_gib() / 2
    name = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"contextual loss, forward + backward, B = {args.batch}, float32, {name}, torch {torch.__version__}")
    rows = run_benchmark(args.sizes, args.channels, args.implementations, batch=args.batch,
                         device=device, repeats=args.repeats, memory_limit_gib=limit)
    print(_format_table(rows, args.implementations))
    record = {"device": name, "torch": torch.__version__, "channels": args.channels,
              "batch": args.batch, "date": time.strftime("%Y-%m-%d"),
              "measurements": [asdict(m) for m in rows]}
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(record, handle, indent=1)
    if args.plot:
        plot_measurements(record).savefig(args.plot, dpi=120, bbox_inches="tight")
    return 0


def plot_measurements(record: dict[str, Any]) -> Any:
    """Time and peak memory against N, one line per implementation, from a benchmark record
    (what ``--json`` writes). Failed or skipped sizes are left out of the lines."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    styles = {"full": "-o", "blocked": "-s", "fused": "-^"}
    colours = {"full": "tab:blue", "blocked": "tab:orange", "fused": "tab:green"}
    measurements = record["measurements"]
    # Sizes measured at another channel count are another curve, not the same line's next point.
    channel_counts = sorted({m.get("channels") for m in measurements}, key=str)
    names = dict.fromkeys(m["implementation"] for m in measurements)
    for name in names:
        for k, channels in enumerate(channel_counts):
            ok = [m for m in measurements if m["implementation"] == name
                  and m.get("channels") == channels and m["status"] == "ok"]
            if not ok:
                continue
            label = name if len(channel_counts) == 1 else f"{name}, C = {channels}"
            style = styles.get(name, "-") if k == 0 else styles.get(name, "-").replace("-", ":")
            for ax, key in zip(axes, ("time_ms", "peak_mib")):
                ax.plot([m["positions"] for m in ok], [m[key] for m in ok], style, label=label,
                        color=colours.get(name), fillstyle="full" if k == 0 else "none")
        failed = [m for m in measurements if m["implementation"] == name and m["status"] != "ok"]
        for m in failed:
            axes[1].annotate(m["status"], (m["positions"], axes[1].get_ylim()[1]), fontsize=8,
                             ha="center", va="top", color="tab:red")
    from matplotlib.ticker import FuncFormatter

    sizes = sorted({m["positions"] for m in record["measurements"]})
    for ax, label in zip(axes, ("time of forward + backward (ms)", "peak memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("N, positions per feature map")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"{record['device']}, C = {record['channels']}, B = {record['batch']}, "
                 f"torch {record['torch']} ({record['date']})", fontsize=10)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    sys.exit(main())
