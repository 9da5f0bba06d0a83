"""The GPU checks of cxlib.gpu_check: behind the ``gpu`` marker (skipped without CUDA), and the
script's dry run, which CI runs on its CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cxlib.gpu_check as gpu_check

ROOT = Path(__file__).resolve().parent.parent
NO_CUDA = not torch.cuda.is_available()


@pytest.mark.skipif(not NO_CUDA, reason="the dry run is what a machine without CUDA prints")
def test_the_script_skips_every_check_without_cuda():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "cxlib.gpu_check"], capture_output=True,
                          text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("GPU check: no CUDA on this machine")
    names = [check.name for check in gpu_check.CHECKS]
    assert lines[1:-1] == [f"SKIPPED {name}: skipped: no CUDA" for name in names]
    assert lines[-1] == f"0 passed, 0 failed, {len(names)} skipped"


def test_one_line_per_check_and_a_failing_check_fails_the_run(monkeypatch, capsys):
    def broken():
        raise gpu_check.CheckFailed("fused vs float64 value error 3e-02")

    def crashing():
        raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setattr(gpu_check, "CHECKS", (
        gpu_check.Check("good", lambda: "all equal"),
        gpu_check.Check("bad", broken),
        gpu_check.Check("crash", crashing),
        gpu_check.Check("absent", lambda: (_ for _ in ()).throw(gpu_check.CheckSkipped("needs 2 GPUs"))),
    ))
    assert gpu_check.main([]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("PASSED  good (") and out[1].endswith("): all equal")
    assert out[2].endswith("): fused vs float64 value error 3e-02")
    assert out[3].endswith("): RuntimeError: CUDA error: an illegal memory access")
    assert out[4] == "SKIPPED absent: skipped: needs 2 GPUs"
    assert out[5] == "1 passed, 2 failed, 1 skipped"
    assert gpu_check.main(["good"]) == 0
    with pytest.raises(SystemExit):
        gpu_check.main(["no-such-check"])


@pytest.mark.gpu
@pytest.mark.skipif(NO_CUDA, reason="no CUDA")
@pytest.mark.parametrize("name", [c.name for c in gpu_check.CHECKS if c.name != "benchmark"])
def test_gpu_check(name):
    check = next(c for c in gpu_check.CHECKS if c.name == name)
    status, detail, _ = gpu_check.run_check(check)
    if status == "skipped":
        pytest.skip(detail)
    assert status == "passed", detail


@pytest.mark.gpu
@pytest.mark.skipif(NO_CUDA, reason="no CUDA")
def test_gpu_benchmark_runs(tmp_path):
    detail = gpu_check.check_benchmark(out_dir=tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 1, detail
