"""The worker modules import each other without a cycle, counting imports inside functions too (a cycle that a
function-level import hides still ties the modules together), and ``contracts`` is a leaf."""

from __future__ import annotations

import ast
from pathlib import Path

import flatmtl.workers.worker as worker_package

PACKAGE = worker_package.__name__


def worker_imports() -> dict[str, set[str]]:
    """Each worker module's imports of its sibling modules, wherever in the file they are."""
    modules = {path.stem: path for path in Path(worker_package.__file__).parent.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == PACKAGE:
                imported.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(f"{PACKAGE}."):
                imported.add(node.module.removeprefix(f"{PACKAGE}.").split(".")[0])
            elif isinstance(node, ast.Import):
                imported.update(
                    alias.name.removeprefix(f"{PACKAGE}.").split(".")[0]
                    for alias in node.names
                    if alias.name.startswith(f"{PACKAGE}.")
                )
        graph[name] = imported - {name, "__init__"}
    return graph


def test_worker_modules_import_each_other_without_a_cycle() -> None:
    graph = worker_imports()
    assert {"trials", "ranks", "callbacks", "points", "contracts"} <= graph.keys()
    assert graph["contracts"] == set()
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join((*path, name))}"
        if name in done:
            return
        for imported in sorted(graph[name]):
            visit(imported, (*path, name))
        done.add(name)

    for name in sorted(graph):
        visit(name, ())
