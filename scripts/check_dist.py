"""Check the built sdist and wheel of cxlib: the wheel holds every module and data file of the
package (every file that git tracks under cxlib/, and cxlib/py.typed) and nothing else of the
repository (nothing of book/, tests/, data/, scripts/ ...), and both carry the version of
cxlib/__init__.py. Prints the version. Usage: python scripts/check_dist.py DIST_DIR"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def source_version() -> str:
    text = (ROOT / "cxlib" / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    if not match:
        sys.exit("cxlib/__init__.py has no __version__ line")
    return match[1]


def package_files() -> set[str]:
    """What the package must ship: cxlib/'s tracked files (none of them is a test or a notebook)."""
    listed = subprocess.run(["git", "ls-files", "cxlib"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split()
    if not listed:  # not a git checkout (e.g. an unpacked sdist): what is on disk
        listed = [str(p.relative_to(ROOT)) for p in (ROOT / "cxlib").rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts]
    files = {name for name in listed if not name.endswith((".pyc", ".pyo"))}
    files.add("cxlib/py.typed")
    return files


def main(dist: Path) -> int:
    version = source_version()
    wheels = sorted(dist.glob("cxlib-*.whl"))
    sdists = sorted(dist.glob("cxlib-*.tar.gz"))
    problems = []
    if len(wheels) != 1 or len(sdists) != 1:
        sys.exit(f"want one wheel and one sdist in {dist}, found {wheels + sdists}")
    wheel, sdist = wheels[0], sdists[0]
    if not wheel.name.startswith(f"cxlib-{version}-py3-none-any"):
        problems.append(f"{wheel.name}: not a pure-Python wheel of version {version}")
    if sdist.name != f"cxlib-{version}.tar.gz":
        problems.append(f"{sdist.name}: not the sdist of version {version}")
    names = set(zipfile.ZipFile(wheel).namelist())
    info = f"cxlib-{version}.dist-info/"
    shipped = {n for n in names if not n.startswith(info)}
    for name in sorted(package_files() - shipped):
        problems.append(f"{wheel.name}: {name} is missing")
    for name in sorted(shipped - package_files()):
        problems.append(f"{wheel.name}: {name} is not part of the package")
    if not (names & {info + "METADATA"}):
        problems.append(f"{wheel.name}: no {info}METADATA")
    else:
        metadata = zipfile.ZipFile(wheel).read(info + "METADATA").decode()
        if f"\nVersion: {version}\n" not in metadata:
            problems.append(f"{wheel.name}: METADATA does not say Version: {version}")
        for extra in ("train", "book"):
            if f"Provides-Extra: {extra}" not in metadata:
                problems.append(f"{wheel.name}: no extra [{extra}]")
    with tarfile.open(sdist) as tar:
        members = {m.name.partition("/")[2] for m in tar.getmembers()}
    for name in sorted(package_files() | {"pyproject.toml", "README.md"}):
        if name not in members:
            problems.append(f"{sdist.name}: {name} is missing")
    for name in sorted(members):
        if name.split("/")[0] in ("book", "data", "_build", ".venv", ".venv-ci"):
            problems.append(f"{sdist.name}: {name} is not part of the package")
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print(version)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
