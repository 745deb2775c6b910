"""The package's import graph: every import points down the layers, no module imports another that imports it
back, and a structvl import inside a function says why it is there.

Layers, lowest first: runtime -> data -> config -> models -> objectives -> engine -> tasks -> search -> lab -> cli.
A module may import its own layer and those below it. The graph is read from the source (every `import` and
`from ... import` naming a structvl module, wherever it sits), so the test needs no import to succeed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import structvl

PACKAGE = Path(structvl.__file__).resolve().parent
LAYERS = ["runtime", "data", "config", "models", "objectives", "engine", "tasks", "search", "lab", "cli"]
# Top-level modules that belong to a layer named otherwise: the config's rules, the command's argument types.
MODULE_LAYER = {"config_checks": "config", "cli_args": "cli", "__main__": "cli"}


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    """The layer index of a structvl module (the package itself and `__main__` sit at the ends)."""
    parts = module.split(".")
    if len(parts) == 1:
        return -1  # `structvl`: the version string, imported by anything
    return LAYERS.index(MODULE_LAYER.get(parts[1], parts[1]))


def read_graph(package: Path = PACKAGE):
    """{module: [(imported module, line, inside a function, has a comment on or above its line)]}."""
    modules = {module_name(p, package): p for p in package.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        tree = ast.parse(source)
        in_function = {id(node) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for node in ast.walk(f)}
        edges = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    package_parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = ".".join(package_parts[:len(package_parts) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            commented = any("#" in lines[i] for i in (node.lineno - 1, node.lineno - 2) if i >= 0)
            for target in targets:
                if target == "structvl" or target.startswith("structvl."):
                    edges.append((target, node.lineno, id(node) in in_function, commented))
        graph[name] = edges
    return graph


def cycles(graph) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, *_ in graph.get(v, []):
            if w not in graph:
                continue
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

    for v in graph:
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph():
    return read_graph()


def test_every_import_points_down_the_layers(graph):
    upward = [f"{m}:{line} imports {t}" for m, edges in graph.items() for t, line, *_ in edges
              if layer(t) > layer(m)]
    assert not upward, "\n".join(upward)


def test_no_import_cycle(graph):
    assert cycles(graph) == []


def test_imports_inside_functions_say_why(graph):
    silent = [f"{m}:{line} imports {t}" for m, edges in graph.items() for t, line, inside, commented in edges
              if inside and not commented]
    assert not silent, "\n".join(silent)


def test_the_checks_catch_an_upward_import_a_cycle_and_a_silent_lazy_import(tmp_path):
    """The reader on a made-up package: data imports engine (upward), engine and tasks import each other."""
    package = tmp_path / "structvl"
    for name, text in {"__init__.py": "", "data/__init__.py": "", "engine/__init__.py": "",
                       "tasks/__init__.py": "",
                       "data/a.py": "from structvl.engine import b\n",
                       "engine/b.py": "def f():\n    from structvl.tasks import c\n",
                       "tasks/c.py": "from structvl.engine.b import f  # fine: tasks sits above engine\n"}.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    fake = read_graph(package)
    assert [(t, inside) for t, _, inside, _ in fake["structvl.data.a"]] == [("structvl.engine.b", False)]
    assert layer("structvl.engine.b") > layer("structvl.data.a")
    assert cycles(fake) == [["structvl.engine.b", "structvl.tasks.c"]]
    assert [(t, commented) for t, _, inside, commented in fake["structvl.engine.b"] if inside] == [
        ("structvl.tasks.c", False)]
