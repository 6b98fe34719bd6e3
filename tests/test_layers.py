"""The layers, read from the source: every import statement of the project's modules,
including those inside functions, parsed with `ast` (no module list to keep up to date).

    learner/  <  actors/  <  tasks/  <  services/  <  experiments/,
    benchmarks/, examples/

A module imports only its own layer and the ones below it, and no two modules import each
other, directly or through others (docs/design.md section 2)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("learner", "actors", "tasks", "services", "experiments", "benchmarks", "examples")
RANK = {"learner": 0, "actors": 1, "tasks": 2, "services": 3, "experiments": 4,
        "benchmarks": 4, "examples": 4}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    return module.split(".")[0]


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports anywhere in its body (the longest known prefix)."""
    found: set[str] = set()
    me = module_name(path)
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package of this module
                pkg = me.split(".")[: -node.level + (path.name == "__init__.py")]
                base = ".".join([*pkg, base] if base else pkg)
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            parts = name.split(".")
            for n in range(len(parts), 0, -1):
                candidate = ".".join(parts[:n])
                if candidate in modules and candidate != me:
                    found.add(candidate)
                    break
    return found


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {m: imports(p, modules) for m, p in modules.items()}


def test_each_layer_imports_only_itself_and_below():
    bad = [f"{m} imports {d}" for m, deps in graph().items() for d in deps
           if RANK[layer(d)] > RANK[layer(m)]]
    assert not bad, "\n".join(bad)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    # a package's __init__ importing its own modules is not a cycle between modules
    edges = {m: {d for d in deps if d != m.rsplit(".", 1)[0]}
             for m, deps in graph().items()}
    assert not cycles(edges), cycles(edges)


def test_the_scanner_sees_imports_inside_functions():
    edges = graph()
    assert "actors.learner" in edges["services.export"]  # imported inside load_trainer
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
