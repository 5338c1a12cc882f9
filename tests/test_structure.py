"""zoo/'s modules import each other without a circle, counting the imports inside functions too (a circle
hidden by local imports is still one: registry -> models -> ... -> registry was). The registry is a leaf, as in
timm: it imports nothing of the models, the factory or the trainer."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "zoo"


def _module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """The zoo modules ``name`` imports anywhere in its body (``from zoo import x`` counts as zoo.x when x is a
    module, else as the package zoo; ``importlib.import_module("zoo.x")`` counts too)."""
    tree = ast.parse(MODULES[name].read_text())
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args:
            if isinstance(node.args[0], ast.Constant):  # importlib.import_module("zoo.models")
                found.add(node.args[0].value)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(m):
        state[m] = 1
        path.append(m)
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                return path[path.index(n) :] + [n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(GRAPH):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_zoo_has_no_import_circle():
    cycle = _cycle()
    assert cycle is None, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize("leaf", ["zoo.registry", "zoo.config", "zoo.errors", "zoo.io", "zoo.cards"])
def test_leaves_import_only_leaves(leaf):
    allowed = {"zoo.config", "zoo.errors", "zoo.io", "zoo.text"}
    assert GRAPH[leaf] <= allowed, f"{leaf} imports {sorted(GRAPH[leaf] - allowed)}"


def test_the_graph_is_read():
    """The walk above sees real edges (a reader that saw none would pass the circle test vacuously)."""
    assert "zoo.registry" in GRAPH["zoo.models.sparse_ae"] and "zoo.builder" in GRAPH["zoo.train"]
    assert "zoo.models" in GRAPH["zoo.builder"] and "zoo.checkpoint" in GRAPH["zoo.factory"]
