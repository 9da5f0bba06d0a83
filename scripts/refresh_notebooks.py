"""Execute the book's notebooks at the fast setting and store the outputs nbval checks.

    python scripts/refresh_notebooks.py [book/01_alignment.ipynb ...] [--keep-all] [--out DIR]

Run it after changing a notebook. It executes each notebook at the fast setting with
``CXLIB_ALLOW_RANDOM_WEIGHTS=1`` (as CI does) and a fresh, temporary ``CXLIB_RUNS_DIR`` (nothing
trained earlier is reloaded), then keeps only the outputs of the cells marked
``# NBVAL_CHECK_OUTPUT``: those are what ``pytest --nbval-lax`` compares, and they print only what
holds on every machine, library version and thread count. Other outputs, and the widget state
of progress bars, are dropped so that the repository holds no stale figures (the published book
executes the notebooks itself). ``--keep-all`` keeps every output; ``--out`` writes the executed
notebooks to another folder instead of in place.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
CHECK_MARK = "# NBVAL_CHECK_OUTPUT"


def refresh(path: Path, *, keep_all: bool, out_dir: Path | None, timeout: int) -> float:
    notebook = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    elapsed = time.perf_counter() - started
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        if not keep_all and CHECK_MARK not in cell.source:
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)  # timestamps: noise in the repository
    if not keep_all:
        notebook.metadata.pop("widgets", None)
    target = (out_dir / path.name) if out_dir else path
    nbformat.write(notebook, target)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--keep-all", action="store_true", help="keep every output")
    parser.add_argument("--out", type=Path, default=None, help="write executed copies here")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args()
    os.environ.update({"CXLIB_SETTING": "fast", "CXLIB_ALLOW_RANDOM_WEIGHTS": "1",
                       "CXLIB_RUNS_DIR": tempfile.mkdtemp(prefix="cxlib-runs-")})
    notebooks = args.notebooks or sorted((ROOT / "book").glob("*.ipynb"))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    for path in notebooks:
        elapsed = refresh(path.resolve(), keep_all=args.keep_all, out_dir=args.out,
                          timeout=args.timeout)
        print(f"{path}: executed in {elapsed:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
