"""scripts/smoke_chapters.py records what it ran: each chapter's status and time, a chapter that
runs past its cell limit as stopped, the chapters a spent budget leaves as not run, and the
record written after every chapter."""

import json
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent


def _notebook(path: Path, source: str) -> Path:
    notebook = nbformat.v4.new_notebook()
    notebook.cells.append(nbformat.v4.new_code_cell(source))
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)
    return path


def _run(tmp_path, *args):
    record = tmp_path / "record.json"
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "smoke_chapters.py"), *args,
                          "--json", str(record)], capture_output=True, text=True, timeout=300)
    return run, json.loads(record.read_text())


def test_statuses_and_budget(tmp_path):
    quick = _notebook(tmp_path / "quick.ipynb",
                      "import os\nassert os.environ['CXLIB_SETTING'] == 'smoke'")
    slow = _notebook(tmp_path / "slow.ipynb", "import time\ntime.sleep(120)")
    broken = _notebook(tmp_path / "broken.ipynb", "raise ValueError('expected 1, got 2')")
    # 15 s per cell: the measuring cell imports torch in a fresh kernel, on a busy CI machine too
    run, record = _run(tmp_path, str(quick), str(broken), str(slow), "--timeout", "15")
    assert run.returncode == 1
    status = {c["chapter"]: c for c in record["chapters"]}
    assert status["quick"]["status"] == "ok" and status["quick"]["peak_rss_mib"] > 0
    assert status["broken"]["status"] == "failed"
    assert "expected 1, got 2" in status["broken"]["error"]
    assert status["slow"]["status"] == "stopped at a cell's time limit (not finished)"
    assert "15" in status["slow"]["error"]
    assert 15 <= status["slow"]["seconds"] < 120

    nap = _notebook(tmp_path / "nap.ipynb", "import time\ntime.sleep(5)")
    run, record = _run(tmp_path, str(nap), str(quick), "--budget", "0.5")
    assert run.returncode == 1
    # the first starts within the budget, its cells held to what is left of it (1 s, less than
    # its nap); the second does not start
    assert [c["status"] for c in record["chapters"]] == [
        "stopped at a cell's time limit (not finished)", "not run (budget spent)"]
    assert record["budget_s"] == 0.5


def test_widget_cells_get_the_short_limit():
    import importlib.util

    spec = importlib.util.spec_from_file_location("colab_check", ROOT / "scripts" / "colab_check.py")
    colab_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(colab_check)
    per_cell = colab_check.cell_timeouts(3600)
    widget = nbformat.v4.new_code_cell("x", metadata={"tags": ["remove-output", "widget"]})
    assert per_cell(widget) == colab_check.WIDGET_CELL_TIMEOUT == 60
    assert per_cell(nbformat.v4.new_code_cell("x")) == 3600
    assert colab_check.cell_timeouts(30)(widget) == 30
    # every chapter's live control is tagged, so the limit reaches them
    for path in sorted((ROOT / "book").glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code" and "interactive_output(" in cell.source:
                assert "widget" in cell.metadata.get("tags", []), path.name
