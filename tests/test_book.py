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
import sys
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
    assert f'"cxlib @ git+{url}@{branch}"' in install
    code_lines = [line for line in install.splitlines() if not line.lstrip().startswith("#")]
    assert not any("torch" in line for line in code_lines), "the install must never reinstall torch"


# What a Colab runtime ships (its own versions, which its runtime relies on: an upgrade of
# ipywidgets from its 7 to 8, for one, breaks Colab's widget manager). Import name -> package.
COLAB_PROVIDES = {
    "torch": "torch", "torchvision": "torchvision", "numpy": "numpy", "tqdm": "tqdm",
    "matplotlib": "matplotlib", "ipywidgets": "ipywidgets", "skimage": "scikit-image",
    "imageio": "imageio", "PIL": "pillow", "IPython": "ipython", "scipy": "scipy",
    "google": "google-colab", "triton": "triton",
}
# Imported only where present, with a fallback: glue for the book's build (cxlib.book.setting.glue),
# notebook execution for the GPU check (cxlib.gpu_check).
OPTIONAL = {"myst_nb", "nbformat", "nbclient"}


def _requirement_names(requirements):
    return {re.split(r"[<>=!~\[ ;@]", r, maxsplit=1)[0].strip().lower() for r in requirements}


def _install_command(path):
    cells = _load(path)["cells"]
    install = next(_source(c) for c in cells if c["cell_type"] == "code" and "google.colab" in _source(c))
    match = re.search(r"pip = \[(.*?)\]", install)
    assert match, "the install cell builds its pip command as pip = [...]"
    return install, match.group(1)


def _imported_modules(source):
    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_colab_install_leaves_colab_packages_alone_and_needs_nothing_else(path):
    """The install cell installs cxlib with --no-deps: nothing that cxlib or its [book] extra
    pulls in is installed or upgraded, so every one of them must be a package Colab ships; and
    everything the chapter and cxlib import must be there too."""
    import tomllib

    install, command = _install_command(path)
    assert '"--no-deps"' in command and "PACKAGE" in command
    assert "[book]" not in install, "an extra would pull in (and upgrade) Colab's packages"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pulled = _requirement_names(project["dependencies"]) | _requirement_names(
        project["optional-dependencies"]["book"])
    assert pulled <= set(COLAB_PROVIDES.values()), f"not on Colab: {pulled - set(COLAB_PROVIDES.values())}"
    imported = set()
    for cell in _load(path)["cells"]:
        if cell["cell_type"] == "code":
            imported |= _imported_modules(_source(cell))
    for module in (ROOT / "cxlib").glob("*.py"):
        imported |= _imported_modules(module.read_text())
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m != "cxlib"}
    missing = third_party - set(COLAB_PROVIDES) - OPTIONAL
    assert not missing, f"imported but neither on Colab nor installed by the install cell: {missing}"


def test_book_extra_does_not_force_upgrades():
    import tomllib

    book = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["book"]
    widgets = next(r for r in book if r.startswith("ipywidgets"))
    assert "7" in widgets, f"ipywidgets 7 (Colab's) must satisfy the [book] extra, got {widgets!r}"


def _first_part_chapters():
    return {ROOT / f"{c['file']}.ipynb" for c in TOC["parts"][0]["chapters"]}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_only_the_chapters_that_need_a_gpu_ask_colab_for_one(path):
    metadata = _load(path)["metadata"]
    if path in _first_part_chapters():  # "Understanding the loss": small, CPU-only
        assert "accelerator" not in metadata and "gpuType" not in metadata.get("colab", {})
    else:
        assert metadata["accelerator"] == "GPU" and metadata["colab"]["gpuType"] == "T4"
    assert "widgets" not in metadata, "saved widget state makes the page load widget scripts"


VGG_USE = re.compile(r"VGG19Features\(|Objective\(|VGGContextualLoss\(|GramLoss\(|PerceptualLoss\(")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_chapter_states_how_it_was_made_near_its_top(path):
    cells = _load(path)["cells"]
    setup = next(i for i, c in enumerate(cells) if "book_setting(" in _source(c))
    assert setup <= 3, "the setup cell comes right after the title and the install cell"
    source = _source(cells[setup])
    assert "display(setting.provenance())" in source
    code = "\n".join(_source(c) for c in cells if c["cell_type"] == "code")
    uses_vgg = bool(VGG_USE.search(code))
    assert f"uses_vgg={uses_vgg}" in source, "the page must name the VGG19 weights it used"


FLOAT_FORMAT = re.compile(r":[<>^ +]?\d*(?:,)?\.\d+[fe%]\}|round\(|:\.\d+[fe]")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_checked_cells_print_no_float_at_its_rounding_edge(path):
    """nbval compares checked outputs character by character on every machine: they print
    comparisons, counts and bounds with a margin, never a rounded measurement."""
    for cell in _load(path)["cells"]:
        source = _source(cell)
        if cell["cell_type"] == "code" and "# NBVAL_CHECK_OUTPUT" in source:
            assert not FLOAT_FORMAT.search(source), source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_widgets_have_a_static_fallback(path):
    cells = _load(path)["cells"]
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "code" and "ipywidgets" in _imported_modules(_source(cell)):
            tags = cell["metadata"].get("tags", [])
            assert "widget" in tags and "remove-output" in tags
            after = cells[i + 1]
            assert after["cell_type"] == "code" and "static-fallback" in after["metadata"].get("tags", [])


GITHUB_REPO = re.compile(r"github\.com/([\w.-]+/[\w.-]+?)(?:\.git)?(?=[/@\s\"')#>]|$)")


def test_one_repository_url_everywhere():
    """_config.yml names the repository; the README, pyproject, the API page, the badges, the
    install cells and the workflows must name the same one."""
    import tomllib

    url = CONFIG["repository"]["url"]
    owner_repo = url.removeprefix("https://github.com/")
    owner, repo = owner_repo.split("/")
    files = [ROOT / "README.md", ROOT / "pyproject.toml", ROOT / "_config.yml",
             *(ROOT / "book").glob("*.md"), *(ROOT / "book").glob("*.ipynb"),
             *(ROOT / ".github" / "workflows").glob("*.yml")]
    seen = 0
    for path in files:
        for found in GITHUB_REPO.findall(path.read_text()):
            found_owner, found_repo = found.split("/")
            # Other projects' repositories are citations (the authors' code, a neural-style code
            # base); any URL with this project's owner or repository name must be this one.
            if found_owner != owner and found_repo != repo:
                continue
            seen += 1
            assert found == owner_repo, f"{path.name} names {found}, _config.yml {owner_repo}"
    assert seen >= len(NOTEBOOKS) + 3  # the install cells, README, _config.yml, pyproject
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    assert urls["Source"] == url and urls["Issues"] == f"{url}/issues"
    assert urls["Documentation"] == f"https://{owner}.github.io/{repo}/"
    readme = (ROOT / "README.md").read_text()
    assert f"https://{owner}.github.io/{repo}/" in readme


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
