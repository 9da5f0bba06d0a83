"""The fused Triton kernels compile for real GPUs, and without register spills.

The other fused tests run the kernels under Triton's interpreter, which never compiles them. Here
every variant the launches can make (kernel, distance, the constexprs and launch options of
``cxlib.contextual.fused.launch_config`` for 1-512 channels, and Triton's specialisation of the sizes and
strides) is compiled with ``triton.compile`` for sm_75 (T4), sm_80 (A100) and sm_90a (H100), no GPU needed,
and the ``ptxas`` of Triton's wheel reports registers and spills (``ptxas -v``).

The compilation runs in one subprocess (``python -m cxlib.contextual.fused_report --json``) without
``TRITON_INTERPRET``, which conftest sets for this process. The table of registers and spills is
printed (``pytest -rP`` or ``-s`` shows it) and attached as the ``fused_compile_report`` property
(``--junitxml``); ``python -m cxlib.contextual.fused_report`` prints the same table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cxlib
import cxlib.contextual.fused as fused
import cxlib.contextual.fused_report as report


def test_every_launch_variant_compiles_without_spills(tmp_path, record_property):
    reason = report.report_problem()
    if reason is not None:
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # The cxlib under test, and a fresh Triton cache unless the caller chose one.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(cxlib.__file__).parents[1]), env.get("PYTHONPATH")]))
    env.setdefault("TRITON_CACHE_DIR", str(tmp_path / "triton_cache"))
    run = subprocess.run([sys.executable, "-m", "cxlib.contextual.fused_report", "--json"],
                         capture_output=True, text=True, env=env, timeout=1200)
    try:
        rows = json.loads(run.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        pytest.fail(f"cxlib.contextual.fused_report failed (exit {run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}")
    table = report.format_report(rows)
    print(f"Triton {fused.triton.__version__}, ptxas of its wheel\n{table}")
    record_property("fused_compile_report", table)

    # Every variant of the launches, for both architectures.
    variants = fused.kernel_variants()
    assert len(rows) == len(variants) * len(report.DEFAULT_TARGETS)
    assert {(r["kernel"], r["distance"], r["capability"]) for r in rows} == {
        (k, d, c) for k in fused.KERNELS for d in fused.FUSED_DISTANCES for c in report.DEFAULT_TARGETS}
    assert {r["constexprs"]["BLOCK_CO"] for r in rows if "BLOCK_CO" in r["constexprs"]} == {
        fused.launch_config("_grad_x", c, "l2")["BLOCK_CO"] for c in range(1, 513)}
    assert {r.get("arch") for r in rows} == {"sm_75", "sm_80", "sm_90a"}

    errors = [r for r in rows if "error" in r]
    assert not errors, "compile errors:\n" + "\n".join(
        f"{r['kernel']} {r['distance']} {r['constexprs']} sm_{r['capability']}: {r['error']}" for r in errors)
    spilling = [r for r in rows if r["spill_stores"] or r["spill_loads"]]
    assert not spilling, f"{len(spilling)} of {len(rows)} compilations spill registers:\n{table}"
    # IEEE float32 products (Eq. 2 amplifies rounding) never become TF32 on tensor cores, which a
    # changed input_precision or Triton default would do silently; the tf32x3 variants do use
    # them (mma on sm_80, wgmma on sm_90a), or they would be IEEE under another name. sm_75 has
    # no TF32.
    def where(r):
        return f"{r['kernel']} {r['distance']} {r['constexprs']['PRECISION']} {r['arch']}"

    ieee = [r for r in rows if r["constexprs"]["PRECISION"] == "ieee"]
    tf32x3 = [r for r in rows if r["constexprs"]["PRECISION"] == "tf32x3"]
    assert ieee and tf32x3
    assert [where(r) for r in ieee if r["mma"] or r["wgmma"]] == []
    assert [where(r) for r in tf32x3 if r["arch"] == "sm_75" and (r["mma"] or r["wgmma"])] == []
    assert [where(r) for r in tf32x3 if r["arch"] == "sm_80" and not r["mma"]] == []
    assert [where(r) for r in tf32x3 if r["arch"] == "sm_90a" and not r["wgmma"]] == []
    assert max(r["registers"] for r in rows) <= 255, table
    for r in rows:  # ptxas kept to the launch's register cap
        assert r["registers"] <= r["options"].get("maxnreg", 255), table


needs_triton = pytest.mark.skipif(fused.triton is None, reason="Triton is not importable")


@needs_triton
@pytest.mark.parametrize("version, available", [
    ("2.1.0", False), ("2.3.1", False), ("3.0.0", True), ("3.1.0+git5389ed79", True), ("3.8.0", True)])
def test_fused_needs_triton_3(monkeypatch, version, available):
    """tl.dot(..., input_precision=...) needs Triton >= 3.0 (torch 2.4): older, no fused path."""
    monkeypatch.setattr(fused.triton, "__version__", version)
    assert fused.fused_available("cuda") is available
    if not available:
        assert not fused.fused_available("cpu")
        x = torch.randn(1, 4, 3)
        with pytest.raises(RuntimeError, match=r"Triton >= 3\.0, found 2\."):
            fused.fused_similarity(x, x, distance="cosine", band_width=0.5, eps=1e-5)


def test_fused_unavailable_without_triton(monkeypatch):
    monkeypatch.setattr(fused, "triton", None)
    assert not fused.fused_available("cuda")
    assert not fused.fused_available("cpu")


def test_launch_config_block_co_and_variants():
    block_co = {c: fused.launch_config("_grad_y", c, "cosine")["BLOCK_CO"] for c in range(1, 513)}
    assert block_co[1] == block_co[16] == 16 and block_co[17] == 32 and block_co[33] == 64 == block_co[512]
    assert "BLOCK_CO" not in fused.launch_config("_row_stats", 64, "l2")
    assert fused.launch_config("_row_stats", 64, "l2")["IS_L2"] is True
    with pytest.raises(ValueError):
        fused.launch_config("_grad_z", 64, "l2")
    with pytest.raises(ValueError):
        fused.launch_config("_grad_x", 64, "l1")
    variants = fused.kernel_variants()
    for v in variants:  # each variant is what launch_config gives for its example shape
        config = fused.launch_config(v["kernel"], v["shape"][2], v["distance"], v["constexprs"]["PRECISION"])
        assert config == {**v["constexprs"], **v["options"]}
    # forward kernels: no BLOCK_CO; _grad_x, _grad_y: 16, 32 or 64; the one-pass kernels: 16.
    assert len({(v["kernel"], v["distance"], v["constexprs"].get("BLOCK_CO")) for v in variants}) == \
        2 * 2 + 2 * 2 * 3 + 2 * 2


@pytest.mark.skipif(not fused.fused_available("cpu"), reason="needs Triton's interpreter")
def test_the_launches_use_launch_config(monkeypatch):
    """The kernels are launched with launch_config's settings (what the compile test checks)."""
    calls = []
    real = fused.launch_config

    def spy(kernel, channels, distance, precision="ieee"):
        calls.append((kernel, channels, distance, precision))
        return real(kernel, channels, distance, precision)

    monkeypatch.setattr(fused, "launch_config", spy)
    x = torch.randn(1, 5, 20, requires_grad=True)
    y = torch.randn(1, 7, 20, requires_grad=True)
    fused.fused_similarity(x, y, distance="l2", band_width=0.5, eps=1e-5).sum().backward()
    two_kernels = ("_row_stats", "_column_max", "_grad_x", "_grad_y")
    assert sorted(calls) == sorted((k, 20, "l2", "ieee") for k in two_kernels)
    calls.clear()
    fused.fused_similarity(x, y, distance="l2", band_width=0.5, eps=1e-5,
                           backward="one-pass").sum().backward()
    assert sorted(calls) == sorted((k, 20, "l2", "ieee") for k in ("_row_stats", "_column_max", "_grad_rows_xy"))
    calls.clear()
    x = torch.randn(1, 5, 32, requires_grad=True)
    fused.fused_similarity(x, x.detach(), distance="cosine", band_width=0.5, eps=1e-5,
                           precision="tf32x3").sum().backward()
    assert sorted(calls) == sorted((k, 32, "cosine", "tf32x3") for k in two_kernels if k != "_grad_y")
