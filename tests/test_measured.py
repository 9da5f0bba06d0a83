"""implementation="auto" on a card that the stored GPU records cover: the measured table
(cxlib/contextual/measured_paths.json) agrees with the records, the nearest measured size decides,
the full path is held to its memory share, and a fused time counts only for the kernels measured.

No GPU here: the device's measurements are handed to "auto" by patching the one function that
reads them, and the choice is read from the path that computed the loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import cxlib
import cxlib.contextual.paths as paths
from cxlib.contextual.full import Term
from cxlib.contextual.measured import (FULL_MATRICES_AT_PEAK, FULL_MEMORY_FRACTION, MeasuredSize,
                                       build_table, device_class, full_fits, fused_kernels_hash,
                                       load_table, measured_choice)
from cxlib.contextual.settings import check_settings

ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30


def test_the_packaged_table_is_the_one_the_stored_records_give():
    records = [json.loads(p.read_text()) for p in sorted((ROOT / "data" / "benchmarks").glob("*.json"))]
    assert records, "no stored benchmark record"
    packaged = json.loads((Path(cxlib.__file__).parent / "contextual" / "measured_paths.json").read_text())
    assert packaged == json.loads(json.dumps(build_table(records))), \
        "rebuild it: python scripts/build_auto_table.py"
    # Every path that ran in the H200 record is in the table with its time; what was skipped is not.
    h200 = {(s.positions, s.channels): s for s in load_table()["H200"]}
    record = next(r for r in records if r["device"] == "NVIDIA H200")
    for row in record["measurements"]:
        times = h200[(row["positions"], row["channels"])].time_ms
        if row["status"] == "ok":
            assert times[row["implementation"]] == pytest.approx(row["time_ms"], abs=1e-4)
        else:
            assert row["implementation"] not in times


@pytest.mark.parametrize("name,expected", [
    ("NVIDIA H200", "H200"), ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 PCIe", "H100"),
    ("NVIDIA A100-SXM4-80GB", "A100"), ("Tesla T4", "T4"), ("NVIDIA L4", "L4"),
    ("NVIDIA GeForce RTX 4090", "NVIDIA GEFORCE RTX 4090"),
])
def test_device_class(name, expected):
    assert device_class(name) == expected


def _sizes(kernels):
    """Three measured sizes where each path is fastest at one of them."""
    return (MeasuredSize(1, 1024, 64, {"full": 1.0, "blocked": 2.0, "fused": 3.0}, kernels),
            MeasuredSize(1, 8192, 64, {"full": 9.0, "blocked": 5.0, "fused": 7.0}, kernels),
            MeasuredSize(1, 65536, 64, {"blocked": 400.0, "fused": 300.0}, kernels))


def test_the_nearest_measured_size_decides():
    sizes = _sizes(kernels="k")
    everything = {"full", "blocked", "fused"}
    choose = lambda **kw: measured_choice(sizes, allowed=kw.pop("allowed", everything), kernels="k", **kw)
    assert choose(batch=1, num_x=1024, num_y=1024, channels=64) == "full"
    assert choose(batch=1, num_x=8192, num_y=8192, channels=64) == "blocked"
    assert choose(batch=1, num_x=65536, num_y=65536, channels=64) == "fused"
    # Nearest in B * Nx * N * C on a log scale: batch and channels count like positions.
    assert choose(batch=64, num_x=1024, num_y=1024, channels=64) == "blocked"   # 64x of 1,024^2
    assert choose(batch=1, num_x=1024, num_y=1024, channels=4096) == "blocked"
    assert choose(batch=1, num_x=2048, num_y=2048, channels=64) == "full"       # 4x vs 16x away
    # Paths that may not run are left out, and the next fastest at that size is taken.
    assert choose(batch=1, num_x=1024, num_y=1024, channels=64, allowed={"blocked", "fused"}) == "blocked"
    assert choose(batch=1, num_x=65536, num_y=65536, channels=64, allowed={"full"}) == "full"  # nearest with a full time
    assert measured_choice(sizes[2:], batch=1, num_x=9, num_y=9, channels=3, allowed={"full"}) is None


def test_a_fused_time_counts_only_for_the_kernels_it_measured():
    for measured, installed in (("old", "new"), (None, "new"), ("new", None)):
        choice = measured_choice(_sizes(kernels=measured), batch=1, num_x=65536, num_y=65536,
                                 channels=64, allowed={"full", "blocked", "fused"}, kernels=installed)
        assert choice == "blocked"
    assert fused_kernels_hash() == fused_kernels_hash() and len(fused_kernels_hash()) == 16


def test_bad_paths_are_refused():
    with pytest.raises(ValueError, match=r"allowed paths must be among \('full', 'blocked', 'fused'\), got \['fast'\]"):
        measured_choice(_sizes("k"), batch=1, num_x=4, num_y=4, channels=2, allowed={"fast"})


def test_the_full_path_keeps_to_its_share_of_the_card():
    memory = 141 * GIB
    limit_entries = FULL_MEMORY_FRACTION * memory / (FULL_MATRICES_AT_PEAK * 4)
    side = int(limit_entries ** 0.5)
    assert full_fits(1, side, side, memory) and not full_fits(1, side + 1, side + 1, memory)
    assert full_fits(4, side // 2, side // 2, memory) and not full_fits(5, side // 2, side // 2, memory)
    # float64 entries, and CoBi's two terms, take twice as much.
    half = int((limit_entries / 2) ** 0.5)
    for kwargs in (dict(bytes_per_entry=8), dict(terms=2)):
        assert full_fits(1, half, half, memory, **kwargs) and not full_fits(1, half + 1, half + 1, memory, **kwargs)


def test_a_newer_record_or_other_kernels_replace_a_size():
    def record(date, kernels, fused_ms):
        return {"device": "NVIDIA H100 80GB HBM3", "date": date, "fused_kernels": kernels,
                "measurements": [{"implementation": "fused", "positions": 4096, "channels": 128,
                                  "batch": 1, "status": "ok", "time_ms": fused_ms},
                                 {"implementation": "blocked", "positions": 4096, "channels": 128,
                                  "batch": 1, "status": "ok", "time_ms": 5.0}]}

    # Two records of one day on other kernels: the later one's times, with its own hash.
    table = build_table([record("2027-01-01", "old", 9.0), record("2027-01-01", "new", 3.0)])
    (entry,) = table["devices"]["H100"]
    assert (entry["fused_kernels"], entry["time_ms"]["fused"]) == ("new", 3.0)
    table = build_table([record("2027-01-02", "a", 1.0), record("2027-01-01", "b", 2.0)])
    (entry,) = table["devices"]["H100"]
    assert (entry["fused_kernels"], entry["time_ms"]["fused"]) == ("a", 1.0)


def test_l1_terms_keep_the_size_rule_on_a_measured_card(monkeypatch):
    # The records time cosine; l1's full path holds B * N * Nx * C numbers in its backward.
    monkeypatch.setattr(paths, "_device_measurements", lambda device: (load_table()["H200"], 141 * GIB))
    settings = check_settings(0.5, 1e-5, "l1", "auto", None, None)
    x = torch.zeros(1, 16384, 128)
    assert paths._auto_implementation([Term(x, x, "l1")], settings) == "blocked"
    assert paths._auto_implementation([Term(x, x, "cosine")], settings) == "full"


@pytest.mark.parametrize("capability,hip,expected", [((9, 0), None, True), ((8, 0), None, True),
                                                     ((7, 5), None, False), ((9, 0), "6.2", False)])
def test_tf32x3_runs_only_where_there_is_tf32(monkeypatch, capability, hip, expected):
    import cxlib.contextual.fused as fused

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.version, "hip", hip)
    assert fused._has_tf32(torch.device("cuda", 0)) is expected
    assert fused._has_tf32(torch.device("cpu"))  # Triton's interpreter: float32 either way


def _choice(monkeypatch, sizes, memory, shape_x, shape_y=None, *, fused_ok=True, block_size=None):
    monkeypatch.setattr(paths, "_device_measurements", lambda device: (sizes, memory))
    monkeypatch.setattr(paths, "_fused_passes", lambda terms, settings: fused_ok)
    x = torch.zeros(shape_x)
    y = torch.zeros(shape_y or shape_x)
    settings = check_settings(0.5, 1e-5, "cosine", "auto", block_size, None)
    return paths._auto_implementation([Term(x, y, "cosine")], settings)


def test_auto_follows_the_h200_record(monkeypatch):
    # Pinned to the stored H200 record (update it with a new record: it says what "auto" then
    # does). The full path was fastest wherever it ran; the fused times were measured on kernels
    # changed since, so they do not count.
    h200 = load_table()["H200"]
    assert all(size.fused_kernels != fused_kernels_hash() for size in h200)
    memory = 141 * GIB
    assert _choice(monkeypatch, h200, memory, (1, 4096, 128)) == "full"
    assert _choice(monkeypatch, h200, memory, (1, 16384, 128)) == "full"   # today's rule: blocked
    assert _choice(monkeypatch, h200, memory, (8, 4096, 256)) == "full"    # conv3_2, 256 px, B = 8
    assert _choice(monkeypatch, h200, memory, (8, 1024, 512)) == "full"    # conv4_2
    # 32,761 positions: 8 matrices of 4.3 GB are more than an eighth of the card.
    assert _choice(monkeypatch, h200, memory, (1, 32761, 128)) == "blocked"
    assert _choice(monkeypatch, h200, memory, (1, 65536, 64)) == "blocked"
    # On a smaller card of the same class the full path gives way sooner.
    assert _choice(monkeypatch, h200, 24 * GIB, (1, 16384, 128)) == "blocked"
    # A block size asks for the blocked path whatever was measured.
    assert _choice(monkeypatch, h200, memory, (1, 4096, 128), block_size=256) == "blocked"


def test_auto_takes_fused_where_measured_fastest_and_only_after_its_check(monkeypatch):
    sizes = _sizes(kernels=fused_kernels_hash())
    assert _choice(monkeypatch, sizes, 80 * GIB, (1, 65536, 64)) == "fused"
    assert _choice(monkeypatch, sizes, 80 * GIB, (1, 65536, 64), fused_ok=False) == "blocked"


def test_without_a_record_auto_keeps_its_size_rule(monkeypatch):
    monkeypatch.setattr(paths, "_device_measurements", lambda device: None)
    settings = check_settings(0.5, 1e-5, "cosine", "auto", None, None)
    small, large = torch.zeros(1, 2048, 8), torch.zeros(1, 2049, 8)
    assert 2048 * 2048 <= paths.AUTO_FULL_MAX_ELEMENTS < 2049 * 2049
    assert paths._auto_implementation([Term(small, small, "cosine")], settings) == "full"
    assert paths._auto_implementation([Term(large, large, "cosine")], settings) == "blocked"
    # And the CPU has no record.
    assert paths._device_measurements(torch.device("cpu")) is None
