"""The main command keeps editions apart: switching the setting or the VGG19 weights between two
builds gives pages made with the new ones, a chapter that failed is executed again, an unchanged
edition is not executed again, and a failed build leaves the published HTML as it was.

A one-chapter book in a temporary folder is built with ``scripts/build_book.py --root`` (what
``bash scripts/build-book`` runs); its chapter prints the setting and weights it ran with, and
logs every execution.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CONFIG = """\
title: Editions
author: test
only_build_toc_files: true
exclude_patterns: ["_build", "**.ipynb_checkpoints"]
execute:
  execute_notebooks: cache
  timeout: 300
  allow_errors: false
"""
TOC = """\
format: jb-book
root: intro
chapters:
  - file: chapter
"""
CHAPTER_CODE = """\
import os
from cxlib.book.setting import book_setting

if os.environ.get("CHAPTER_FAILS") == "1":
    raise RuntimeError("this chapter fails on purpose")
setting = book_setting(uses_vgg=True)
with open(os.environ["EXECUTIONS_LOG"], "a") as log:
    log.write(f"{setting.name} {setting.vgg_weights}\\n")
print(f"SETTING={setting.name} WEIGHTS={setting.vgg_weights}")
"""


def _notebook(code: str) -> dict:
    return {
        "cells": [
            {"cell_type": "markdown", "id": "title", "metadata": {}, "source": ["# Chapter"]},
            {"cell_type": "code", "id": "code", "metadata": {}, "execution_count": None,
             "outputs": [], "source": code.splitlines(keepends=True)},
        ],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


@pytest.fixture()
def book(tmp_path, monkeypatch):
    root = tmp_path / "book"
    root.mkdir()
    (root / "_config.yml").write_text(CONFIG)
    (root / "_toc.yml").write_text(TOC)
    (root / "intro.md").write_text("# Editions\n\nA one-chapter book.\n")
    (root / "chapter.ipynb").write_text(json.dumps(_notebook(CHAPTER_CODE)))
    monkeypatch.setenv("EXECUTIONS_LOG", str(tmp_path / "executions.log"))
    for name in ("CXLIB_SETTING", "CXLIB_FAST", "CXLIB_VGG_WEIGHTS", "CXLIB_ALLOW_RANDOM_WEIGHTS",
                 "CXLIB_RUNS_DIR", "CHAPTER_FAILS"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "executions.log").write_text("")
    return root


def _build(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = dict(os.environ, **env)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environment.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "build_book.py"), "--root", str(root), *args],
                          capture_output=True, text=True, env=environment, timeout=600, check=False)


def _page(root: Path) -> str:
    return (root / "_build" / "html" / "chapter.html").read_text()


def _executions(root: Path) -> list[str]:
    return (root.parent / "executions.log").read_text().splitlines()


def test_editions_follow_the_setting_and_the_weights(book):
    failed = _build(book, "--setting", "fast", "--weights", "random", CHAPTER_FAILS="1")
    assert failed.returncode != 0
    assert "the build failed" in failed.stderr
    assert not (book / "_build" / "html").exists(), "a failed build publishes nothing"

    # The same edition again: the chapter that failed is executed again, not kept.
    fast = _build(book, "--setting", "fast", "--weights", "random")
    assert fast.returncode == 0, fast.stderr[-3000:]
    assert "SETTING=fast WEIGHTS=RANDOM (seed 0; CXLIB_VGG_WEIGHTS=random)" in _page(book)
    edition = json.loads((book / "_build" / "html" / "edition.json").read_text())
    assert edition["setting"] == "fast" and edition["vgg_weights"] == "random"

    full = _build(book, "--setting", "full", "--weights", "random")
    assert full.returncode == 0, full.stderr[-3000:]
    assert "SETTING=full" in _page(book) and "SETTING=fast" not in _page(book)

    again = _build(book, "--setting", "fast", "--weights", "random")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "SETTING=fast" in _page(book)
    assert _executions(book) == ["fast RANDOM (seed 0; CXLIB_VGG_WEIGHTS=random)",
                                 "full RANDOM (seed 0; CXLIB_VGG_WEIGHTS=random)"]  # reused

    # The ImageNet weights appear in the cache: "auto" takes them, in an edition of their own.
    from cxlib.vgg import imagenet_weights_path

    imagenet_weights_path().parent.mkdir(parents=True, exist_ok=True)
    imagenet_weights_path().write_bytes(b"stands for the weights file")
    imagenet = _build(book, "--setting", "fast")
    assert imagenet.returncode == 0, imagenet.stderr[-3000:]
    assert "SETTING=fast WEIGHTS=ImageNet" in _page(book)
    assert len(_executions(book)) == 3
    editions = sorted(p.name.rsplit("-", 1)[0] for p in (book / "_build" / "editions").iterdir())
    assert editions == ["fast-cpu-imagenet", "fast-cpu-random", "full-cpu-random"]

    # A failed build of another edition leaves the published one as it was.
    broken = _build(book, "--setting", "full", CHAPTER_FAILS="1")
    assert broken.returncode != 0 and "SETTING=fast WEIGHTS=ImageNet" in _page(book)


def test_help_lists_the_options():
    done = subprocess.run(["bash", str(ROOT / "scripts" / "build-book"), "--help"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0
    for option in ("--setting {auto,fast,full}", "--weights {auto,imagenet,random}", "--output"):
        assert option in done.stdout
    assert "_build/editions/<edition>/" in done.stdout
