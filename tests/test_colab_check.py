"""The Colab-version check: its pinned list covers what the chapters need on Colab, the chapters
find their data there, and its runner fails a chapter on an error or on a deprecation from cxlib
or the chapter (and only on those)."""

import importlib.util
import json
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from test_book import COLAB_PROVIDES, CONFIG, NOTEBOOKS, _install_command, _requirement_names  # noqa: E402


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements-colab.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][0-9A-Za-z.]*)", line)
            assert match, f"requirements-colab.txt: expected name==version, got {line!r}"
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_requirements_colab_pins_every_package_colab_provides_and_says_where_from():
    pins = _pins()
    # google-colab is Colab's own (not on PyPI as Colab has it); triton comes with torch's GPU build.
    needed = set(COLAB_PROVIDES.values()) - {"google-colab", "triton"}
    assert needed <= set(pins), f"not pinned: {needed - set(pins)}"
    assert {"nbclient", "ipykernel"} <= set(pins), "the check executes the chapters with nbclient"
    header = (ROOT / "requirements-colab.txt").read_text()
    assert "googlecolab/backend-info" in header and "To refresh" in header
    assert re.search(r"\b[0-9a-f]{40}\b", header), "the source commit of Colab's list"


def test_cxlib_ranges_admit_colabs_versions():
    """The chapters install cxlib with --no-deps: Colab's versions must satisfy its ranges, or
    cxlib would run on versions it does not support."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins()
    wanted = project["dependencies"] + project["optional-dependencies"]["book"] \
        + project["optional-dependencies"]["train"]
    for text in wanted:
        requirement = Requirement(text)
        name = requirement.name.lower()
        assert name in pins, f"{name} is required by cxlib but not in requirements-colab.txt"
        assert requirement.specifier.contains(pins[name]), f"{text} excludes Colab's {pins[name]}"


def test_the_repository_and_readme_name_the_check():
    assert "colab-check" in (ROOT / "scripts" / "test").read_text()
    assert "requirements-colab.txt" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapters_find_the_repository_data_on_colab(path):
    """A chapter on Colab runs in /content, where ../data does not exist: the install cell clones
    the repository and moves into its book/ folder, and every ../data path the chapter names is
    in the repository."""
    install, _ = _install_command(path)
    assert f'"{CONFIG["repository"]["url"]}"' in install
    colab_branch = install.split('if "google.colab" in sys.modules:', 1)[1]
    assert '"clone"' in colab_branch and '"--depth"' in colab_branch
    assert 'os.chdir(os.path.join(CHECKOUT, "book"))' in colab_branch
    code = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"]
                     if c["cell_type"] == "code")
    for name in re.findall(r"\.\./data/[\w./-]+", code):
        assert (path.parent / name).exists(), f"{path.name} reads {name}, which is not there"


def _runner():
    spec = importlib.util.spec_from_file_location("colab_check", ROOT / "scripts" / "colab_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runner_reads_the_chapters_in_the_tocs_order():
    # Resolved: under scripts/test-wheel the tests run from a copy of tests/ beside links to
    # the checkout's book/ and scripts/, so the same chapter has two spellings.
    assert [p.resolve() for p in _runner().chapters()] == [p.resolve() for p in NOTEBOOKS]


def _notebook(tmp_path, name, *cells):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    path = tmp_path / f"{name}.ipynb"
    nbformat.write(notebook, path)
    return path


def test_runner_fails_a_chapter_on_an_error_or_a_deprecation_of_its_own(tmp_path):
    runner = _runner()
    run = lambda path: runner.run_chapter(path, timeout=120, require_installed=False)  # noqa: E731
    passes = run(_notebook(
        tmp_path, "passes", "x = 1 + 1",
        # A library's own deprecation, raised and attributed there, is not the chapter's.
        "import warnings\nwarnings.warn_explicit('old', FutureWarning, 'lib.py', 1, module='somelib')",
        "import cxlib, torch\nx = torch.rand(1, 3, 4, 4)\nassert cxlib.contextual_loss(x, x) < 1e-3"))
    assert passes["status"] == "ok", passes
    assert passes["python"] == sys.version.split()[0] and passes["peak_rss_mib"] > 10
    for name, cell in (("raises", "1 / 0"),
                       ("deprecated", "import warnings\nwarnings.warn('old', DeprecationWarning)"),
                       ("future", "import warnings\nwarnings.warn('changes', FutureWarning)")):
        record = run(_notebook(tmp_path, name, "x = 1", cell))
        assert record["status"] == "failed", record
        expected = {"raises": "ZeroDivisionError", "deprecated": "DeprecationWarning",
                    "future": "FutureWarning"}[name]
        assert expected in record["error"], record


def test_runner_fails_a_chapter_that_imported_cxlib_from_elsewhere(tmp_path):
    runner = _runner()
    path = _notebook(tmp_path, "elsewhere", "import cxlib")
    record = runner.run_chapter(path, timeout=120, require_installed=True)
    inside = Path(record["cxlib_file"]).resolve().is_relative_to(Path(sys.prefix).resolve())
    assert (record["status"] == "ok") == inside, record
