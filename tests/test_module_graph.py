"""The package's import graph: no cycle, and no module imports a layer above its own (docs/architecture.md).

Every ``import`` counts, also those inside functions: a function-level import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tdfusion_core"

#: layer of each folder (first matching prefix wins): a module's layer is its folder's, and a module may import its
#: own layer and those below it; the package root holds only the public API (``__init__``) and the old-path table
LAYERS: list[tuple[str, int]] = [
    # 0: foundations every layer may use
    ("tdfusion_core.common", 0),
    ("tdfusion_core.nets", 0),
    ("tdfusion_core.data", 0),
    ("tdfusion_core.metrics", 0),
    # 1: the kernel (the paper), the plugin system and the built-in tasks
    ("tdfusion_core.kernel", 1),
    ("tdfusion_core.plugin", 1),
    ("tdfusion_core.tasks", 1),
    # 2: the training harness
    ("tdfusion_core.training", 2),
    # 3: apps and the command line
    ("tdfusion_core.apps", 3),
    ("tdfusion_core.commands", 3),
    ("tdfusion_core", 3),
]
ROOT_MODULES = {"tdfusion_core", "tdfusion_core._moved"}


def layer(module: str) -> int:
    for prefix, level in LAYERS:
        if module == prefix or module.startswith(prefix + ".") or (prefix.endswith("_") and module.startswith(prefix)):
            return level
    raise AssertionError(module)


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    keep = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*keep, base] if base else keep)
                # ``from pkg import mod`` depends on pkg.mod; ``from pkg import name`` on pkg
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for target in targets:
                if target.startswith("tdfusion_core"):
                    dep = owner(target)
                    if dep and dep != name:
                        graph[name].add(dep)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_plugin_manager_does_not_know_the_registries():
    assert "tdfusion_core.plugin.registry" not in import_graph()["tdfusion_core.plugin.manager"]


def test_no_module_imports_a_layer_above_its_own():
    upward = sorted(
        f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
        for m, deps in import_graph().items()
        for d in deps
        if d != "tdfusion_core" and layer(d) > layer(m)
    )
    assert upward == []


def test_every_module_lives_in_a_layer_folder():
    at_root = sorted(
        m
        for m in modules()
        if m.count(".") <= 1
        and m not in ROOT_MODULES
        and not any(m == prefix or m.startswith(prefix + ".") for prefix, _ in LAYERS[:-1])
    )
    assert at_root == [], "put each module in the folder of its layer (docs/architecture.md)"
