"""Rebuild cxlib/contextual/measured_paths.json, the table that implementation="auto" reads, from
the stored GPU benchmark records (data/benchmarks/*.json, written by python -m cxlib.gpu_check).
Usage: python scripts/build_auto_table.py [RECORD ...]"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cxlib.contextual.measured import build_table

ROOT = Path(__file__).resolve().parent.parent
TABLE_PATH = ROOT / "cxlib" / "contextual" / "measured_paths.json"


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or sorted((ROOT / "data" / "benchmarks").glob("*.json"))
    table = build_table(json.loads(path.read_text()) for path in paths)
    TABLE_PATH.write_text(json.dumps(table, indent=1) + "\n")
    print(f"{TABLE_PATH}: {', '.join(f'{name} ({len(rows)} sizes)' for name, rows in table['devices'].items())}"
          f" from {len(paths)} record(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
