"""The import graph of ``app/`` and ``worker/``: no cycle, and the worker never imports the API.

Every import counts, also one inside a function (where a cycle hides: it runs only when
called, so nothing fails at import time until the order changes) and under ``TYPE_CHECKING``.
Read from the sources with ``ast``; nothing is imported. Parsed in a fresh interpreter: in the
suite's process, CPython 3.11's parser failed once with "AST constructor recursion depth
mismatch" (a recursion limit changed meanwhile by another thread of an earlier test), which says
nothing about the sources.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.utils.processes import ROOT

PACKAGES = ("app", "worker")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {
        module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
    }


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join([*parent, node.module or ""]).strip(".")


def imported(tree: ast.AST, package: str, known: set[str]) -> Iterator[str]:
    """The project's modules an import names; ``from a.b import c`` is ``a.b.c`` when ``c`` is
    a module, else ``a.b``. (That importing ``a.b.c`` runs ``a/b/__init__.py`` first is true of
    every package and not counted.)"""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                yield name


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        edges[name] = {target for target in imported(tree, package, set(known)) if target != name}
    return edges


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(edges.get(start, ()))
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(edges.get(node, ()))
    return seen


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The modules that reach each other, in groups of more than one."""
    reach = {node: reachable(edges, node) for node in edges}
    groups = {
        tuple(sorted({node} | {other for other in reach[node] if node in reach[other]}))
        for node in edges
        if node in reach[node]
    }
    return sorted(list(group) for group in groups if len(group) > 1)


def graph_read_apart() -> dict[str, set[str]]:
    """``graph()``, run by a fresh interpreter (see the module's docstring)."""
    code = (
        "import json; from tests.unit.test_import_graph import graph; "
        "print(json.dumps({name: sorted(targets) for name, targets in graph().items()}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return {name: set(targets) for name, targets in json.loads(done.stdout).items()}


def test_no_module_of_app_or_worker_is_in_an_import_cycle() -> None:
    assert cycles(graph_read_apart()) == []


def test_the_worker_never_imports_the_api() -> None:
    edges = graph_read_apart()
    wrong = {
        name: sorted(t for t in targets if t.split(".")[0] == "app")
        for name, targets in edges.items()
        if name.split(".")[0] == "worker"
    }
    assert {name: targets for name, targets in wrong.items() if targets} == {}


def test_a_cycle_through_a_function_level_import_is_found() -> None:
    """The checker itself: the shape the tracing modules had (a import b at the top, b import a
    inside a function) is a cycle."""
    a = ast.parse("from worker.b import thing\n")
    b = ast.parse("def later():\n    from worker.a import other\n")
    known = {"worker.a", "worker.b"}
    edges = {
        "worker.a": set(imported(a, "worker", known)),
        "worker.b": set(imported(b, "worker", known)),
    }
    assert cycles(edges) == [["worker.a", "worker.b"]]
