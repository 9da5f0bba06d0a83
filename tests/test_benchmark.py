"""The benchmark command runs and measures both paths (its numbers are reported, not asserted)."""

import subprocess
import sys

from cxlib.benchmark import measure


def test_full_path_is_skipped_above_the_memory_limit():
    m = measure("full", 65536, 64, memory_limit_gib=1.0)
    assert m.status == "skipped" and "needs about 128 GiB" in m.note


def test_command_line_measures_both_paths_in_fresh_processes():
    out = subprocess.run(
        [sys.executable, "-m", "cxlib.benchmark", "--sizes", "64", "--channels", "8",
         "--device", "cpu", "--repeats", "1"],
        capture_output=True, text=True, check=True,
    ).stdout
    header, row = (line.split() for line in out.strip().splitlines()[-2:])
    assert header[:6] == ["N", "C", "full", "ms", "full", "MiB"]
    assert row[:2] == ["64", "8"]
    full_ms, full_mib, blocked_ms, blocked_mib = map(float, row[2:6])
    assert full_ms > 0 and blocked_ms > 0
    # 64 positions: the full path's 64 x 64 float32 matrices are 16 KiB each.
    assert 0.01 < full_mib < 5 and 0.01 < blocked_mib < 5
