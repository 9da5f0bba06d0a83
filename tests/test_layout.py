"""The package's layout: no import cycles, dependency arrows that run one way, a light
``import cxlib``, optional dependencies that name their extra, and complete public docstrings."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import cxlib

PACKAGE = Path(cxlib.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """cxlib module -> the cxlib modules it imports anywhere in its source (at the top or inside
    a function: a lazy import is still an arrow)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                # ``from package import submodule`` points at the submodule.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target.startswith("cxlib") and target != name:
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_graph_sees_lazy_and_relative_imports():
    graph = _import_graph()
    assert "cxlib.contextual.fused" in graph["cxlib.contextual.paths"]  # inside a function
    assert "cxlib.contextual.fused" in graph["cxlib.contextual.fused_report"]  # from . import fused
    assert "cxlib._checks" in graph["cxlib.contextual.settings"]  # from .. import
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_module_of_cxlib_imports_in_a_cycle():
    assert _cycles(_import_graph()) == []


def test_arrows_run_from_book_and_training_to_the_loss_never_back():
    graph = _import_graph()
    tools = {"cxlib.gpu_check", "cxlib.benchmark"}
    for module, imports in graph.items():
        if module.startswith(("cxlib.book", "cxlib.training")) or module in tools or module == "cxlib":
            continue
        wrong = sorted(i for i in imports if i.startswith(("cxlib.book", "cxlib.training")))
        assert wrong == [], f"{module} imports {wrong}"
    for module, imports in graph.items():
        if module.startswith("cxlib.training"):
            assert not any(i.startswith("cxlib.book") for i in imports), module
        if module.startswith("cxlib.contextual"):
            outside = sorted(i for i in imports if not i.startswith("cxlib.contextual"))
            assert set(outside) <= {"cxlib._checks", "cxlib._reduction"}, (module, outside)


def test_import_cxlib_loads_neither_triton_nor_training_nor_book():
    code = ("import sys, cxlib; "
            "print('triton' in sys.modules, "
            "sorted(m for m in sys.modules if m.startswith(('cxlib.training', 'cxlib.book', "
            "'cxlib.contextual.fused', 'cxlib.benchmark', 'cxlib.gpu_check'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False []"
    # They load on first use.
    code = "import sys, cxlib; cxlib.training.train; cxlib.book.load_image; print('cxlib.training.loop' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
    with pytest.raises(AttributeError, match="module 'cxlib' has no attribute 'apps'"):
        cxlib.apps  # noqa: B018


def test_a_missing_optional_dependency_names_the_extra(monkeypatch, tmp_path):
    from cxlib._optional import require
    from cxlib.training.data import read_image_file

    with pytest.raises(ImportError, match=r'reading x needs no_such_module_cx, which cxlib\'s '
                                          r'\'book\' extra installs: pip install "cxlib\[book\] @ '
                                          r'git\+https://github.com/cx-book/contextual-loss-book@main"'):
        require("no_such_module_cx.sub", extra="book", purpose="reading x")
    for name in [m for m in sys.modules if m == "imageio" or m.startswith("imageio.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "imageio", None)  # as if not installed
    with pytest.raises(ImportError, match=r'needs imageio, which cxlib\'s \'train\' extra installs: '
                                          r'pip install "cxlib\[train\] @ git'):
        read_image_file(tmp_path / "x.png", 8)
    from cxlib.book import metrics

    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.metrics", None)
    import torch

    with pytest.raises(ImportError, match=r'needs scikit-image, .* pip install "cxlib\[book\] @ git.*'
                                          r'\(or pip install scikit-image\)'):
        metrics.psnr(torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8))


def _public_api():
    import cxlib.book
    import cxlib.contextual
    import cxlib.training

    seen = {}
    for module in (cxlib, cxlib.contextual, cxlib.training, cxlib.book):
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                seen[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return sorted(seen.items())


def _takes_tensors(obj) -> bool:
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        hints = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return False
    return any("Tensor" in str(p.annotation) for p in hints)


@pytest.mark.parametrize("name,obj", _public_api(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_public_function_and_class_has_a_complete_literal_docstring(name, obj):
    doc = obj.__doc__ or ""
    source = inspect.getsource(obj)
    # Literal text in the source, not assembled at import time.
    assert doc.strip()[:40] in source, f"{name}: the docstring is not literal text in the source"
    if issubclass(obj, BaseException) if inspect.isclass(obj) else False:
        return
    params = [p for p in inspect.signature(obj.__init__ if inspect.isclass(obj) else obj)
              .parameters.values() if p.name not in ("self", "args", "kwargs")]
    is_dataclass_like = inspect.isclass(obj) and "Attributes:" in doc
    missing = []
    if params and not is_dataclass_like and "Args:" not in doc:
        missing.append("Args")
    if inspect.isfunction(obj) and "Returns:" not in doc:
        missing.append("Returns")
    if _takes_tensors(obj) and "Shape:" not in doc and not is_dataclass_like:
        missing.append("Shape")
    if ">>> " not in doc and not is_dataclass_like:
        missing.append("Example")
    assert missing == [], f"{name} lacks {', '.join(missing)}"
