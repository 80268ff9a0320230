"""The packages' import structure: data flows backbone <- proposals <- detect, no module imports
a private name of another package, and no two modules import each other (even lazily)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("backbone", "proposals", "detect")
LAYER = {"backbone": 0, "proposals": 1, "detect": 2}


def project_imports() -> dict[str, list[tuple[str, list[str]]]]:
    """module -> [(imported project module, names taken from it)], every import statement
    (module level or inside a function)."""
    graph: dict[str, list[tuple[str, list[str]]]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            module = f"{package}.{path.stem}" if path.stem != "__init__" else package
            rows = graph.setdefault(module, [])
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                        and node.module.split(".")[0] in PACKAGES:
                    rows.append((node.module, [a.name for a in node.names]))
                elif isinstance(node, ast.Import):
                    rows += [(a.name, []) for a in node.names if a.name.split(".")[0] in PACKAGES]
    return graph


def cycles(edges: dict[str, list[str]]) -> list[tuple[str, str]]:
    """The pairs (a, b), a < b, of modules that reach each other through imports."""
    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in edges.get(todo.pop(), []):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    reached = {m: reach(m) for m in edges}
    return sorted({(a, b) for a in edges for b in reached[a] if a < b and a in reached.get(b, set())})


def test_cycles_on_hand_made_graphs():
    assert cycles({"a": ["b"], "b": ["a"], "c": ["a"]}) == [("a", "b")]
    assert cycles({"a": ["b"], "b": ["c"], "c": ["a"]}) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert cycles({"a": ["b"], "b": [], "c": ["a", "b"]}) == []


def test_layers_flow_one_way():
    wrong = [(m, target) for m, rows in project_imports().items() for target, _ in rows
             if LAYER[target.split(".")[0]] > LAYER[m.split(".")[0]]]
    assert wrong == []


def test_no_private_names_across_packages():
    wrong = [(m, target, name) for m, rows in project_imports().items() for target, names in rows
             for name in names if name.startswith("_") and target.split(".")[0] != m.split(".")[0]]
    assert wrong == []


def test_no_two_modules_import_each_other():
    # a package's __init__ re-exports its modules: an import of the package itself is left out
    edges = {m: [t for t, _ in rows if t not in (m, m.split(".")[0])] for m, rows in project_imports().items()}
    assert cycles(edges) == []
