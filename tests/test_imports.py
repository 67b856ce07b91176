"""The modules of ``pinnopt`` import each other without circles.

The graph is read from the source with ``ast``: every ``import pinnopt...`` and
``from pinnopt... import ...`` statement, at module level, inside a function or under
``if TYPE_CHECKING:`` (a lazy or annotation-only import hides a circle without removing it),
is an edge to the module it names. ``from pinnopt.a
import b`` points at ``pinnopt.a.b`` when that is a module, else at ``pinnopt.a``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pinnopt"


def module_names() -> dict[str, Path]:
    """``{dotted module name: source file}`` of every module of the package."""
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def import_graph() -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``."""
    modules = module_names()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolved against the importing module's package
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or ``None`` (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_sees_the_trainer_imports():
    graph = import_graph()
    assert "pinnopt.training.loop" in graph["pinnopt.train"]
    assert "pinnopt.training.rundir" in graph["pinnopt.report"]
    assert "pinnopt.checkpoint" in graph["pinnopt.training.rundir"]


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", ["pinnopt.training.loop", "pinnopt.training.rundir",
                                    "pinnopt.training.batches", "pinnopt.training.setup"])
def test_the_trainer_does_not_draw_plots(module):
    assert "pinnopt.report" not in import_graph()[module]
