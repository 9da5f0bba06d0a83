"""Registers and spills of the fused Triton kernels, per launch variant and GPU architecture.

    python -m cxlib.contextual.fused_report                  # sm_75, sm_80 and sm_90a, every variant, a table
    python -m cxlib.contextual.fused_report --json           # the rows as JSON (what the tests read)
    python -m cxlib.contextual.fused_report --num-warps 4    # other launch options, to compare

Compiles with ``triton.compile`` for an explicit target (no GPU needed) and runs the ``ptxas`` of
Triton's wheel with ``-v``. Runs without ``TRITON_INTERPRET`` (it is removed here before cxlib is
imported).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["DEFAULT_TARGETS", "compile_report", "format_report", "ptxas_path"]

#: Compute capabilities checked by default: T4 (sm_75, Colab's free tier), A100 (sm_80) and H100/H200
#: (sm_90a).
DEFAULT_TARGETS = (75, 80, 90)
#: Pointer arguments to int32 data (the other pointers are to float32).
_INT32_POINTERS = ("AM_out", "ROW_out", "BROW")
#: float32 scalar arguments.
_FLOAT_ARGS = ("inv_h", "eps")
#: ASTSource's ``constexprs`` argument, which this module builds, came with Triton 3.3.
MIN_TRITON_FOR_REPORT = (3, 3)


def _fused() -> ModuleType:
    """cxlib.contextual.fused, whose kernels must be real JIT functions (not Triton's interpreter's)."""
    from . import fused

    if fused.triton is not None and fused._interpreting():
        raise RuntimeError("compiling needs a process without TRITON_INTERPRET=1 "
                           "(python -m cxlib.contextual.fused_report removes it)")
    return fused


def report_problem() -> str | None:
    """Why the kernels cannot be compiled and reported here, or None when they can."""
    from . import fused

    problem = fused._triton_problem()
    if problem is not None:
        return problem
    version = fused.triton.__version__
    if fused._version_tuple(version) < MIN_TRITON_FOR_REPORT:
        return (f"the compile report needs Triton >= "
                f"{'.'.join(map(str, MIN_TRITON_FOR_REPORT))}, found {version} "
                "(the kernels themselves run from 3.0)")
    missing = [cap for cap in DEFAULT_TARGETS if ptxas_path(cap) is None]
    if missing:
        where = Path(fused.triton.__file__).parent / "backends" / "nvidia" / "bin"
        return f"Triton's wheel ships no ptxas for sm_{missing} (looked in {where})"
    return None


def ptxas_path(capability: int = 80) -> Path | None:
    """The ptxas shipped in Triton's wheel for ``capability``, or None."""
    from . import fused

    if fused.triton is None:
        return None
    bin_dir = Path(fused.triton.__file__).parent / "backends" / "nvidia" / "bin"
    names = ["ptxas-blackwell", "ptxas"] if capability >= 100 else ["ptxas"]
    return next((bin_dir / n for n in names if (bin_dir / n).is_file()), None)


def _ast_source(kernel: Any, constexprs: dict[str, Any], ints: dict[str, Any]) -> Any:
    """An ASTSource for ``kernel`` specialised as Triton's JIT specialises a launch with these
    integer arguments: values of 1 folded in as constants, multiples of 16 (and every pointer:
    torch allocates 16-byte aligned) marked divisible by 16."""
    from triton.compiler import ASTSource

    fused = _fused()
    names = list(kernel.arg_names)
    ones = {n for n in names if ints.get(n) == 1}
    signature, attrs = {}, {}
    for index, name in enumerate(names):
        if name in constexprs or name in ones:
            signature[name] = "constexpr"
        elif name in ints:
            signature[name] = "i32" if -2**31 <= ints[name] < 2**31 else "i64"
        elif name in _FLOAT_ARGS:
            signature[name] = "fp32"
        else:
            signature[name] = "*i32" if name in _INT32_POINTERS else "*fp32"
        pointer = signature[name].startswith("*")
        if pointer or (name in ints and name not in ones and fused._specialization(ints[name]) == "16"):
            attrs[(index,)] = [["tt.divisibility", 16]]
    values = {**constexprs, **{name: 1 for name in ones}}
    return ASTSource(kernel, signature, constexprs=values, attrs=attrs)


def _gpu_target(capability: int) -> Any:
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", capability, 32)


def _parse_ptxas(log: str) -> dict[str, Any]:
    """Registers, stack, spills and shared memory from ``ptxas -v``'s report."""
    def number(pattern: str) -> int:
        found = re.search(pattern, log)
        return int(found.group(1)) if found else 0

    return {
        "shared": number(r"(\d+) bytes smem"),
        "registers": number(r"Used (\d+) registers"),
        "stack": number(r"(\d+) bytes stack frame"),
        "spill_stores": number(r"(\d+) bytes spill stores"),
        "spill_loads": number(r"(\d+) bytes spill loads"),
    }


def _compile_one(job: dict[str, Any]) -> dict[str, Any]:
    """Compile one variant for one capability and read ptxas's report (in a worker process)."""
    row = {k: job[k] for k in ("kernel", "distance", "constexprs", "options", "shape", "specialization")}
    row["capability"] = job["capability"]
    started = time.perf_counter()
    try:
        fused = _fused()
        source = _ast_source(getattr(fused, job["kernel"]), job["constexprs"],
                             fused._int_args(*job["shape"]))
        compiled = fused.triton.compile(source, target=_gpu_target(job["capability"]),
                                        options=dict(job["options"]))
        ptx = compiled.asm["ptx"]
        row["arch"] = re.search(r"\.target\s+(\w+)", ptx).group(1)  # type: ignore[union-attr]
        # Tensor-core instructions: mma.sync (sm_75 and newer) and wgmma (sm_90a). IEEE float32
        # products must compile to FMA, never to TF32 on tensor cores; tf32x3 ones to mma/wgmma.
        row["mma"] = len(re.findall(r"^\s*mma\.", ptx, re.M))
        row["wgmma"] = len(re.findall(r"^\s*wgmma\.mma_async", ptx, re.M))
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "kernel.ptx"
            path.write_text(ptx)
            done = subprocess.run([str(ptxas_path(job["capability"])), "-v", f"--gpu-name={row['arch']}",
                                   str(path), "-o", str(path.with_suffix(".o"))],
                                  capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"ptxas failed: {done.stderr.strip()[-500:]}")
        row.update(_parse_ptxas(done.stdout + done.stderr))
    except Exception as error:  # noqa: BLE001 - reported in the row, the others go on
        row["error"] = f"{type(error).__name__}: {str(error)[:500]}"
    row["seconds"] = round(time.perf_counter() - started, 2)
    return row


def compile_report(targets: Iterable[int] = DEFAULT_TARGETS,
                   variants: list[dict[str, Any]] | None = None,
                   options: dict[str, Any] | None = None,
                   jobs: int | None = None) -> list[dict[str, Any]]:
    """Compile every variant (:func:`cxlib.contextual.fused.kernel_variants`) for every target capability
    and return one row per compilation: the variant, ``arch``, ``registers``, ``stack``,
    ``spill_stores``, ``spill_loads`` (bytes), ``shared`` (bytes), ``mma`` and ``wgmma`` (the
    PTX's tensor-core instructions), ``seconds``, or ``error``.

    Args:
        targets: compute capabilities, e.g. (75, 80, 90).
        variants: what to compile; default: every variant for 1-512 channels.
        options: launch options replacing the launches' own (``None`` values remove one), to
            compare settings.
        jobs: worker processes; default: the CPU count.
    """
    fused = _fused()
    problem = report_problem()
    if problem is not None:
        raise RuntimeError(problem)
    variants = fused.kernel_variants() if variants is None else variants
    work = []
    for variant in variants:
        merged = {**variant["options"], **(options or {})}
        merged = {k: v for k, v in merged.items() if v is not None}
        for capability in targets:
            work.append({**variant, "options": merged, "capability": capability})
    with ProcessPoolExecutor(max_workers=jobs or os.cpu_count()) as pool:
        return list(pool.map(_compile_one, work))


def format_report(rows: list[dict[str, Any]]) -> str:
    """The rows as a table: one line per compilation."""
    header = f"{'kernel':<12} {'distance':<8} {'BLOCK_CO':>8} {'options':<36} {'shape (Nx, N, C)':<18} {'arch':<7} {'regs':>4} {'spill st/ld':>11} {'smem':>6}"
    lines = [header, "-" * len(header)]
    for r in rows:
        options = " ".join(f"{k}={v}" for k, v in r["options"].items())
        co = r["constexprs"].get("BLOCK_CO", "-")
        shape = "x".join(map(str, r["shape"]))
        if "error" in r:
            lines.append(f"{r['kernel']:<12} {r['distance']:<8} {co!s:>8} {options:<36} {shape:<18} sm_{r['capability']:<4} ERROR {r['error']}")
            continue
        spills = f"{r['spill_stores']}/{r['spill_loads']}"
        lines.append(f"{r['kernel']:<12} {r['distance']:<8} {co!s:>8} {options:<36} {shape:<18} {r['arch']:<7} {r['registers']:>4} {spills:>11} {r['shared']:>6}")
    return "\n".join(lines)


def _channels(text: str) -> list[int]:
    """"1-512" or "3,16,130" -> channel counts."""
    out: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        out += range(int(low), int(high or low) + 1)
    return out


def _points(text: str) -> tuple[int, int]:
    num_x, _, num_y = text.lower().partition("x")
    return int(num_x), int(num_y or num_x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxlib.contextual.fused_report", description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, nargs="+", default=None, metavar="CAPABILITY",
                        help="compute capabilities (default: 75 80 90)")
    parser.add_argument("--channels", type=_channels, default=None,
                        help="channel counts whose variants to compile, e.g. 1-512 or 3,64 (default: 1-512)")
    parser.add_argument("--points", type=_points, nargs="+", default=None, metavar="NXxN",
                        help="point counts Nx x N crossed with the channels (default: 49x49 1024x1024)")
    parser.add_argument("--num-warps", type=int, help="override the launches' num_warps")
    parser.add_argument("--num-stages", type=int, help="override num_stages (0: Triton's default)")
    parser.add_argument("--maxnreg", type=int, help="override maxnreg, the registers per thread "
                        "ptxas may use (0: none)")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: CPU count)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)

    os.environ.pop("TRITON_INTERPRET", None)
    from . import fused

    variants = fused.kernel_variants(
        channels=args.channels or range(1, 513), points=args.points or fused.DEFAULT_POINTS)
    options = {k: v or None for k, v in dict(num_warps=args.num_warps, num_stages=args.num_stages,
                                             maxnreg=args.maxnreg).items() if v is not None}
    rows = compile_report(targets=args.targets or DEFAULT_TARGETS, variants=variants,
                          options=options, jobs=args.jobs)
    if args.json:
        json.dump(rows, sys.stdout)
        print()
    else:
        print(format_report(rows))
    failed = [r for r in rows if "error" in r or r["spill_stores"] or r["spill_loads"]]
    if not args.json:
        print(f"\n{len(rows)} compilations, {len(failed)} with errors or spills")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
