"""Execute every chapter with nbclient in the environment this Python runs in: the Colab-version
check's runner (scripts/colab-check makes that environment from requirements-colab.txt).

Usage (by scripts/colab-check, with the Colab environment's Python):
    python scripts/colab_check.py [book/04_denoising.ipynb ...] [--json record.json]

It needs only what Colab has (nbclient, nbformat, ipykernel) and reads the chapters' order from
_toc.yml without PyYAML. Each chapter runs in a fresh kernel, in its own folder, at the setting
in the environment (scripts/colab-check sets CXLIB_SETTING=fast). A cell that raises fails the
chapter, and so does a DeprecationWarning or FutureWarning attributed to cxlib or to the
chapter's own code: a cell added before the chapter turns those into errors. The exit status is
1 if any chapter failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

ROOT = Path(__file__).resolve().parent.parent

#: Seconds a cell tagged "widget" (a live ipywidgets control, which computes on small copies and
#: answers at once) may take. After such a cell, nbclient 0.11 with jupyter_client 8.10 and pyzmq
#: 27 sometimes receives the kernel's reply only when its wait for it times out, though the kernel
#: sent it at once and sits idle (chapter 4 at the smoke setting waited out the whole limit; a
#: two-cell notebook, a 10 s sleep then interactive_output, reproduces it): a short limit bounds
#: that wait, and a widget cell that truly took longer would still fail.
WIDGET_CELL_TIMEOUT = 60


def cell_timeouts(timeout: int):
    """nbclient's timeout_func: ``timeout`` per cell, at most WIDGET_CELL_TIMEOUT for widgets."""
    def per_cell(cell) -> int:
        if "widget" in cell.get("metadata", {}).get("tags", []):
            return min(timeout, WIDGET_CELL_TIMEOUT)
        return timeout
    return per_cell

# Warnings attributed to cxlib's modules or to the chapter itself (a notebook's cells run in
# __main__) are errors: what Colab's versions deprecate shows up here before it breaks there.
STRICT_WARNINGS = r"""import warnings
for category in (DeprecationWarning, FutureWarning):
    warnings.filterwarnings("error", category=category, module=r"(cxlib(\..*)?|__main__)$")
"""
_MEASURE = """import json, resource, sys
import cxlib, numpy, torch
print("CXLIB_COLAB " + json.dumps({
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "python": sys.version.split()[0], "torch": torch.__version__, "numpy": numpy.__version__,
    "cxlib_file": cxlib.__file__, "prefix": sys.prefix,
}))
"""


def chapters() -> list[Path]:
    """The chapters in _toc.yml's order (its `- file: book/...` lines)."""
    files = re.findall(r"^\s*-\s*file:\s*(\S+)\s*$", (ROOT / "_toc.yml").read_text(), re.M)
    return [ROOT / f"{f}.ipynb" for f in files if (ROOT / f"{f}.ipynb").is_file()]


def run_chapter(path: Path, *, timeout: int, require_installed: bool = True) -> dict:
    """Execute one chapter in a fresh kernel; its status, time and what the kernel ran on.

    With ``require_installed``, a chapter that imported cxlib from outside the environment
    (the checkout, say) fails.
    """
    notebook = nbformat.read(path, as_version=4)
    notebook.cells.insert(0, nbformat.v4.new_code_cell(STRICT_WARNINGS))
    notebook.cells.append(nbformat.v4.new_code_cell(_MEASURE))
    client = NotebookClient(notebook, timeout=timeout, timeout_func=cell_timeouts(timeout),
                            kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    record: dict = {"chapter": path.stem}
    started = time.perf_counter()
    try:
        client.execute()
        record["status"] = "ok"
    except CellExecutionError as error:
        record["status"] = "failed"
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # the traceback's colours
        lines = [line for line in text.strip().splitlines() if line.strip()]
        record["error"] = lines[-1][:500] if lines else repr(error)
    except CellTimeoutError as error:
        record["status"] = "failed"
        record["error"] = str(error).strip().splitlines()[0][:500]
    except DeadKernelError as error:  # e.g. killed for memory
        record["status"] = "failed"
        record["error"] = f"the kernel died: {error}"[:500]
    record["seconds"] = round(time.perf_counter() - started, 1)
    for output in notebook.cells[-1].get("outputs", []):
        for line in output.get("text", "").splitlines():
            if line.startswith("CXLIB_COLAB "):
                record.update(json.loads(line.removeprefix("CXLIB_COLAB ")))
    # The chapter must have used the installed cxlib, not the checkout's.
    if require_installed and record["status"] == "ok" and not str(Path(record.get("cxlib_file", "")).resolve()).startswith(
            str(Path(record.get("prefix", "?")).resolve()) + os.sep):
        record["status"] = "failed"
        record["error"] = f"cxlib imported from {record.get('cxlib_file')}, not the environment's"
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every chapter")
    parser.add_argument("--json", type=Path, help="write the record here")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    args = parser.parse_args()
    paths = [p.resolve() for p in args.notebooks] or chapters()
    print(f"Python {platform.python_version()} at {sys.executable};"
          f" CXLIB_SETTING={os.environ.get('CXLIB_SETTING', '(unset)')}", flush=True)
    records = []
    for path in paths:
        record = run_chapter(path, timeout=args.timeout)
        records.append(record)
        line = f"{record['chapter']:>26}: {record['status']:>6} in {record['seconds']:6.1f} s"
        if "peak_rss_mib" in record:
            line += f", peak RSS {record['peak_rss_mib'] / 1024:.1f} GiB"
        if record["status"] != "ok":
            line += f"\n{'':>28}{record['error']}"
        print(line, flush=True)
    if args.json:
        args.json.write_text(json.dumps({"python": platform.python_version(),
                                         "chapters": records}, indent=1) + "\n")
    failed = [r["chapter"] for r in records if r["status"] != "ok"]
    total = sum(r["seconds"] for r in records)
    print(f"{len(records) - len(failed)} of {len(records)} chapters ran in {total:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
