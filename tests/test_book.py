"""The book's chapters follow the book's conventions (structure, links, checked outputs).

What the chapters compute is validated by nbval (``pytest --nbval-lax book``); this checks what a
reader relies on before running anything: every chapter in the table of contents exists, opens in
Colab at the configured repository and branch, installs cxlib from there, and has the parts every
chapter promises.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

import cxlib

ROOT = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())


def _toc_files():
    files = []
    for part in TOC.get("parts", []):
        files += [chapter["file"] for chapter in part["chapters"]]
    return files


NOTEBOOKS = [ROOT / f"{name}.ipynb" for name in _toc_files() if (ROOT / f"{name}.ipynb").exists()]


def _load(path):
    return json.loads(path.read_text())


def _source(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_every_toc_entry_exists_and_every_chapter_is_in_the_toc():
    for name in [TOC["root"], *_toc_files()]:
        assert any((ROOT / f"{name}{ext}").exists() for ext in (".md", ".ipynb")), name
    listed = set(_toc_files())
    for notebook in (ROOT / "book").glob("*.ipynb"):
        assert f"book/{notebook.stem}" in listed, f"{notebook.name} is not in _toc.yml"
    assert len(NOTEBOOKS) >= 3


def test_repository_and_branch_are_configured_once():
    repository = CONFIG["repository"]
    assert repository["branch"] == "main"
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", repository["url"])
    assert CONFIG["execute"]["execute_notebooks"] in ("cache", "off", "force")
    assert "colab_url" in CONFIG["launch_buttons"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_opens_in_colab_and_installs_cxlib_from_the_configured_repository(path):
    url, branch = CONFIG["repository"]["url"], CONFIG["repository"]["branch"]
    cells = _load(path)["cells"]
    first = _source(cells[0])
    assert first.startswith("# "), "a chapter starts with its title"
    owner_repo = url.removeprefix("https://github.com/")
    badge = f"https://colab.research.google.com/github/{owner_repo}/blob/{branch}/book/{path.name}"
    assert badge in first
    install = next(_source(c) for c in cells if c["cell_type"] == "code" and "google.colab" in _source(c))
    assert f'"cxlib[book] @ git+{url}@{branch}"' in install
    code_lines = [line for line in install.splitlines() if not line.lstrip().startswith("#")]
    assert not any("torch" in line for line in code_lines), "the install must never reinstall torch"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_has_goals_setup_summary_and_exercises_with_solutions(path):
    notebook = _load(path)
    markdown = "\n".join(_source(c) for c in notebook["cells"] if c["cell_type"] == "markdown")
    for part in ("**What you will learn**", "## Setup", "## Summary", "## Exercises"):
        assert part in markdown, f"{path.name} lacks {part}"
    assert re.search(r":::\{admonition\} Solutions\n:class: dropdown", markdown)
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    code = "\n".join(_source(c) for c in notebook["cells"] if c["cell_type"] == "code")
    assert "book_setting(" in code and "This chapter ran in" in code


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_checked_cells_have_outputs_and_other_cells_none(path):
    checked = 0
    for cell in _load(path)["cells"]:
        if cell["cell_type"] != "code":
            continue
        if "# NBVAL_CHECK_OUTPUT" in _source(cell):
            checked += 1
            assert cell["outputs"], "a checked cell stores the output nbval compares"
            assert all(o["output_type"] == "stream" and o["name"] == "stdout" for o in cell["outputs"])
        else:
            assert not cell["outputs"], "run scripts/refresh_notebooks.py: only checked outputs are kept"
    assert checked >= 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapters_do_not_redefine_cxlib(path):
    public = set(cxlib.__all__)
    for cell in _load(path)["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "\n".join(line for line in _source(cell).splitlines() if not line.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                assert node.name not in public, f"{path.name} redefines cxlib.{node.name}"
