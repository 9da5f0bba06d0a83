"""The benchmark command: its table and record, the paths agreeing, and the blocked path needing
less memory where it must (timings are reported, not asserted)."""

import json
import math
import subprocess
import sys

import pytest

from cxlib.benchmark import measure


def test_full_path_is_skipped_above_the_memory_limit():
    m = measure("full", 65536, 64, memory_limit_gib=1.0)
    assert m.status == "skipped" and "needs about 128 GiB" in m.note


def test_command_line_measures_both_paths_in_fresh_processes(tmp_path):
    # N = 2,304 (48 x 48): the full path holds several 2304 x 2304 float32 matrices (20.25 MiB
    # each); the blocked path holds blocks of 2^21 numbers (8 MiB), so it must need less.
    out = subprocess.run(
        [sys.executable, "-m", "cxlib.benchmark", "--sizes", "64", "2304", "--channels", "8",
         "--device", "cpu", "--repeats", "1", "--json", str(tmp_path / "bench.json")],
        capture_output=True, text=True, check=True,
    ).stdout
    lines = out.strip().splitlines()
    assert lines[0].startswith("contextual loss, forward + backward, B = 1, float32, CPU")
    header, *rows = (line.split() for line in lines[1:])
    assert header == ["N", "C", "full", "ms", "full", "MiB", "blocked", "ms", "blocked", "MiB",
                      "blocked/full", "time", "blocked/full", "memory"]
    assert [row[:2] for row in rows] == [["64", "8"], ["2,304", "8"]]
    record = json.loads((tmp_path / "bench.json").read_text())
    by = {(m["implementation"], m["positions"]): m for m in record["measurements"]}
    assert sorted(by) == [("blocked", 64), ("blocked", 2304), ("full", 64), ("full", 2304)]
    assert all(m["status"] == "ok" and m["channels"] == 8 for m in by.values())
    for size in (64, 2304):
        # Same seeded features in separate processes: the paths agree on the loss.
        full, blocked = by[("full", size)], by[("blocked", size)]
        assert blocked["loss"] == pytest.approx(full["loss"], rel=1e-5)
        assert 0 < full["loss"] < math.log(size)
    matrix_mib = 2304**2 * 4 / 2**20
    full_mib, blocked_mib = by[("full", 2304)]["peak_mib"], by[("blocked", 2304)]["peak_mib"]
    assert full_mib >= 2 * matrix_mib  # at least the distances and CX_ij at once
    assert blocked_mib < full_mib / 2
    # The table prints what the record holds, and the ratios of the two.
    table = dict(zip(["full_ms", "full_mib", "blocked_ms", "blocked_mib"], map(float, rows[1][2:6])))
    assert table["blocked_mib"] == pytest.approx(blocked_mib, abs=0.5)
    assert rows[1][7] == f"{blocked_mib / full_mib:.2f}x"


def test_plot_keeps_each_channel_count_on_its_own_line():
    """The stored H200 record measured N = 65,536 at C = 64 and the rest at C = 128: no plotted
    line may join points of two channel counts."""
    import json
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    from cxlib.benchmark import plot_measurements

    path = Path(__file__).resolve().parent.parent / "data/benchmarks/2026-11-27-nvidia-h200.json"
    record = json.loads(path.read_text())
    fig = plot_measurements(record)
    channels_at = {}
    for m in record["measurements"]:
        if m["status"] == "ok":
            channels_at[m["implementation"], m["positions"]] = m["channels"]
    time_axis = fig.axes[0]
    lines = {line.get_label(): list(line.get_xdata()) for line in time_axis.get_lines()}
    assert set(lines) == {"full, C = 128", "blocked, C = 128", "fused, C = 128",
                          "blocked, C = 64", "fused, C = 64"}
    for label, xs in lines.items():
        name, channels = label.split(", C = ")
        assert {channels_at[name, n] for n in xs} == {int(channels)}
    assert lines["fused, C = 64"] == [65536]
    import matplotlib.pyplot as plt

    plt.close(fig)
