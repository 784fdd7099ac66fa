"""The package's import graph: no cycle, and no module imports a layer above its own (docs/architecture.md).

Every ``import`` counts, also those inside functions: a function-level import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tdfusion_core"

#: layer of each module (first matching prefix wins); a module may import its own layer and those below it
LAYERS: list[tuple[str, int]] = [
    # 0: foundations every layer may use
    ("tdfusion_core.data", 0),
    ("tdfusion_core.nets", 0),
    ("tdfusion_core.metrics", 0),
    ("tdfusion_core.io", 0),
    ("tdfusion_core.colour", 0),
    ("tdfusion_core.functional", 0),
    ("tdfusion_core.losses", 0),
    ("tdfusion_core.precision", 0),
    ("tdfusion_core.sampling", 0),
    ("tdfusion_core.sizes", 0),
    ("tdfusion_core.atomic", 0),
    ("tdfusion_core.devices", 0),
    ("tdfusion_core.torch_files", 0),
    # 1: the kernel (the paper) and the plugin system
    ("tdfusion_core.task", 1),
    ("tdfusion_core.tasks", 1),
    ("tdfusion_core.meta", 1),
    ("tdfusion_core.fusion_phase", 1),
    ("tdfusion_core.meta_phase", 1),
    ("tdfusion_core.multitask", 1),
    ("tdfusion_core.hookspecs", 1),
    ("tdfusion_core.plugins", 1),
    ("tdfusion_core.registry", 1),
    ("tdfusion_core.builtin_", 1),
    # 2: the training harness
    ("tdfusion_core.config_docs", 3),
    ("tdfusion_core.config_io", 2),
    ("tdfusion_core.config", 2),
    ("tdfusion_core.state_guard", 2),
    ("tdfusion_core.provenance", 2),
    ("tdfusion_core.run_files", 2),
    ("tdfusion_core.run_logger", 2),
    ("tdfusion_core.validation", 2),
    ("tdfusion_core.generator_stats", 2),
    ("tdfusion_core.distributed", 2),
    ("tdfusion_core.checkpoints", 2),
    ("tdfusion_core.batches", 2),
    ("tdfusion_core.builders", 2),
    ("tdfusion_core.train_state", 2),
    ("tdfusion_core.inspection", 2),
    ("tdfusion_core.trainer", 2),
    ("tdfusion_core.tb_logger", 2),
    ("tdfusion_core.visual", 2),
    # 3: apps, experiments and the command line
    ("tdfusion_core.bench.trees", 3),
    ("tdfusion_core.bench.step_worker", 3),
    ("tdfusion_core", 3),
]


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
    assert "tdfusion_core.registry" not in import_graph()["tdfusion_core.plugins"]


def test_no_module_imports_a_layer_above_its_own():
    upward = sorted(
        f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
        for m, deps in import_graph().items()
        for d in deps
        if d != "tdfusion_core" and layer(d) > layer(m)
    )
    assert upward == []
