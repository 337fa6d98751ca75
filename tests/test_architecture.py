"""The package's shape: acyclic modules in layers, each importing only from the layers below."""

import pathlib
import sys

import grimp
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 5000))
    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycle_among_modules_function_local_imports_included():
    graph = grimp.build_graph("jaxtrain", include_external_packages=False)
    assert "jaxtrain.runs.vsweep" in graph.find_modules_directly_imported_by("jaxtrain.runs.sweep"), \
        "the graph must see function-local imports (sweep imports vsweep inside a function)"
    assert _cycles(graph) == []


def test_layers_contract_is_kept(monkeypatch):
    from importlinter.cli import lint_imports
    monkeypatch.chdir(ROOT)
    assert lint_imports(no_cache=True) == 0, "run `lint-imports` to see the upward import"


def test_layers_contract_catches_an_upward_import(tmp_path, monkeypatch):
    """The contract is live: a copy of the package with one upward import breaks it."""
    import shutil
    from importlinter.cli import lint_imports
    copy = tmp_path / "src"
    shutil.copytree(ROOT / "jaxtrain", copy / "jaxtrain")
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    (copy / "jaxtrain/util/upward.py").write_text("def f():\n    from jaxtrain.runs import api\n")
    monkeypatch.chdir(copy)
    monkeypatch.syspath_prepend(str(copy))
    for name in [m for m in sys.modules if m == "jaxtrain" or m.startswith("jaxtrain.")]:
        monkeypatch.delitem(sys.modules, name)
    assert lint_imports(no_cache=True) == 1


@pytest.mark.parametrize("layer", ["util", "config", "data", "model", "parallel", "engine", "ckpt",
                                   "training", "runs", "cli"])
def test_every_layer_is_a_package(layer):
    assert (ROOT / "jaxtrain" / layer / "__init__.py").is_file()


def test_no_function_in_the_package_is_longer_than_60_lines():
    import ast
    long = []
    paths = sorted((ROOT / "jaxtrain").rglob("*.py"))
    assert len(paths) > 50 and any(p.parent.name == "cli" for p in paths)  # the whole package is read
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == [], long
