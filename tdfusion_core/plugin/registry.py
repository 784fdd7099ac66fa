"""Name registries built from the registration hooks: tasks, fusion nets, loss generators, datasets.

Each registry maps a name to a factory and remembers which plugin registered it. Looking up an unknown name raises
:class:`RegistryError` listing the available names.

Imports run one way: this module reads the plugin manager (:mod:`tdfusion_core.plugin.manager`), which knows nothing of
it. A registry is rebuilt whenever the set of registered plugins differs from the one it was built from, so
registering or unregistering a plugin needs no cache invalidation.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

from tdfusion_core.plugin.hookspecs import REGISTRATION_HOOKS
from tdfusion_core.plugin.manager import get_plugin_manager

if TYPE_CHECKING:
    import torch.nn as nn

    from tdfusion_core.kernel.task import Task


class RegistryError(LookupError):
    """An unknown name, a clash between plugins, or an invalid registration."""


#: registry kind -> hook name
HOOKS: dict[str, str] = REGISTRATION_HOOKS

#: kind -> (the plugin set it was built from, ``name -> (factory, plugin name)``)
_cache: dict[str, tuple[tuple[Any, ...], dict[str, tuple[Any, str]]]] = {}


def clear_caches() -> None:
    """Forget built registries (not needed after (un)registering a plugin: that rebuilds them by itself)."""
    _cache.clear()


def _plugin_set(pm: pluggy.PluginManager) -> tuple[Any, ...]:
    """What a registry depends on: the manager and its registered plugins (by identity and name)."""
    return (id(pm), *sorted((id(p), str(pm.get_name(p))) for p in pm.get_plugins()))


def _validate(kind: str, name: str, factory: Any, plugin_name: str) -> None:
    if not callable(factory):
        raise RegistryError(f"plugin {plugin_name!r} registered {kind} {name!r} as {factory!r}, which is not callable")
    if kind == "task" and inspect.isclass(factory):
        from tdfusion_core.kernel.task import Task, check_task_class

        if not issubclass(factory, Task):
            raise RegistryError(
                f"plugin {plugin_name!r} registered task {name!r} as {factory.__qualname__}, "
                "which does not subclass tdfusion_core.kernel.task.Task"
            )
        check_task_class(factory)


def _build(kind: str, pm: pluggy.PluginManager) -> dict[str, tuple[Any, str]]:
    hook = getattr(pm.hook, HOOKS[kind])
    entries: dict[str, tuple[Any, str]] = {}
    for impl in reversed(hook.get_hookimpls()):
        plugin_name = pm.get_name(impl.plugin) or repr(impl.plugin)
        mapping = impl.function() or {}
        for name, factory in mapping.items():
            if name in entries:
                raise RegistryError(
                    f"{kind} name {name!r} is registered by both {entries[name][1]!r} and {plugin_name!r}"
                )
            _validate(kind, name, factory, plugin_name)
            entries[name] = (factory, plugin_name)
    return entries


def entries(kind: str) -> dict[str, tuple[Any, str]]:
    """All registered ``name -> (factory, plugin name)`` of one kind (``task``, ``fusion_net``, ...)."""
    if kind not in HOOKS:
        raise RegistryError(f"unknown registry kind {kind!r}; kinds: {', '.join(HOOKS)}")
    pm = get_plugin_manager()
    key = _plugin_set(pm)
    cached = _cache.get(kind)
    if cached is None or cached[0] != key:
        cached = (key, _build(kind, pm))
        _cache[kind] = cached
    return cached[1]


def available(kind: str) -> list[str]:
    """Sorted names registered for ``kind``."""
    return sorted(entries(kind))


def lookup(kind: str, name: str) -> Callable[..., Any]:
    """The factory registered as ``name``; an unknown name raises an error listing the available names."""
    table = entries(kind)
    if name not in table:
        names = sorted(table)
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        label = kind.replace("_", " ")
        raise RegistryError(
            f"unknown {label} {name!r}. Available: {', '.join(names) or '(none)'}.{hint} "
            "Installed plugins add more; see `tdfusion plugins`."
        )
    return table[name][0]


def names_registered_by(plugin: Any) -> dict[str, list[str]]:
    """``{kind: [names]}`` registered by one plugin object, as validated registries hold them."""
    pm = get_plugin_manager()
    plugin_name = pm.get_name(plugin)
    found: dict[str, list[str]] = {}
    for kind in HOOKS:
        try:
            table = entries(kind)
        except RegistryError:
            continue
        names = sorted(n for n, (_, owner) in table.items() if owner == plugin_name)
        if names:
            found[kind] = names
    return found


def get_task(name: str, **config: Any) -> Task:
    """Build the task registered as ``name`` with its keyword configuration."""
    return lookup("task", name)(**config)


def get_fusion_net(name: str, num_sources: int = 2, **config: Any) -> nn.Module:
    """Build the fusion network architecture registered as ``name``."""
    return lookup("fusion_net", name)(num_sources=num_sources, **config)


def get_loss_generator(name: str, num_sources: int = 2, **config: Any) -> nn.Module:
    """Build the loss-generator architecture registered as ``name``."""
    return lookup("loss_generator", name)(num_sources=num_sources, **config)


def get_dataset(name: str, **options: Any) -> Any:
    """Build the dataset registered as ``name``."""
    return lookup("dataset", name)(**options)


def resolve_dataset(data: str, split: str = "train", **options: Any) -> Any:
    """A registered dataset name (``synthetic``, ``llvip``, ...) or a folder path (the ``folder`` dataset)."""
    names = available("dataset")
    if data in names:
        return get_dataset(data, split=split, **options)
    path = Path(data)
    if path.exists():
        return get_dataset("folder", root=str(path), split=split, **options)
    raise FileNotFoundError(
        f"--data {data!r} is neither an existing folder nor a registered dataset ({', '.join(names)})"
    )
