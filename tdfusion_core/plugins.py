"""The plugin manager: built-in plugins, entry-point discovery and the allow-list.

Plugins are installed distributions that declare an entry point in the group ``tdfusion``::

    [project.entry-points.tdfusion]
    yolo = "tdfusion_yolo.plugin"

``TDFUSION_LOAD_PLUGINS`` limits which installed plugins load: unset loads all of them, a comma-separated list loads
only the named entry points, and an empty value loads only the built-ins. A plugin whose import raises is skipped
with a warning naming it and the exception; it is listed by ``tdfusion plugins`` with its error.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import threading
import warnings
from typing import Any

import pluggy

from tdfusion_core import hookspecs

ENTRY_POINT_GROUP = "tdfusion"
ALLOW_LIST_ENV = "TDFUSION_LOAD_PLUGINS"

#: Modules of tdfusion_core that implement hooks; each is registered as a built-in plugin.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "tdfusion_core.builtin_tasks",
    "tdfusion_core.builtin_nets",
    "tdfusion_core.builtin_datasets",
    "tdfusion_core.commands.data",
    "tdfusion_core.commands.plugins_cmd",
    "tdfusion_core.commands.eval",
    "tdfusion_core.commands.downstream",
    "tdfusion_core.commands.fuse",
    "tdfusion_core.commands.bench",
    "tdfusion_core.commands.train",
    "tdfusion_core.commands.demo",
    "tdfusion_core.commands.experiment",
    "tdfusion_core.commands.new_plugin",
    "tdfusion_core.tb_logger",
)

_lock = threading.Lock()
_pm: pluggy.PluginManager | None = None
#: Entry-point name -> error message, for plugins that failed to load.
failed_plugins: dict[str, str] = {}
#: Entry-point name -> version of the distribution that provides it.
_plugin_versions: dict[str, str] = {}


class PluginLoadWarning(UserWarning):
    """Warned when an installed plugin cannot be imported or registered."""


def allowed_plugin_names() -> set[str] | None:
    """Names allowed by ``TDFUSION_LOAD_PLUGINS``; ``None`` means every installed plugin."""
    raw = os.environ.get(ALLOW_LIST_ENV)
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def _make_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("tdfusion")
    pm.add_hookspecs(hookspecs)
    for module_name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    _load_entry_points(pm)
    return pm


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    allowed = allowed_plugin_names()
    failed_plugins.clear()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if allowed is not None and ep.name not in allowed:
            continue
        if pm.has_plugin(ep.name):
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
            pm.check_pending()
            if ep.dist is not None:
                _plugin_versions[ep.name] = ep.dist.version
        except Exception as exc:  # a broken plugin must never break the others
            if pm.has_plugin(ep.name):
                pm.unregister(name=ep.name)
            message = f"{type(exc).__name__}: {exc}"
            failed_plugins[ep.name] = message
            warnings.warn(
                f"tdfusion plugin {ep.name!r} ({ep.value}) could not be loaded and is skipped: {message}",
                PluginLoadWarning,
                stacklevel=2,
            )


def get_plugin_manager() -> pluggy.PluginManager:
    """Return the process-wide plugin manager, creating it (and loading plugins) on first use."""
    global _pm
    with _lock:
        if _pm is None:
            _pm = _make_manager()
        return _pm


def reset_plugin_manager() -> None:
    """Forget the plugin manager so the next call re-reads entry points and ``TDFUSION_LOAD_PLUGINS``.

    Also clears the registries built from it (mainly for tests and notebooks).
    """
    global _pm
    with _lock:
        _pm = None
    from tdfusion_core import registry

    registry.clear_caches()


def register_plugin(plugin: Any, name: str | None = None) -> None:
    """Register a plugin object (a module, class or instance with ``hookimpl`` functions) without packaging it.

    Useful in scripts and notebooks (see ``examples/run_custom_task.py``). Registries are rebuilt on next use.
    """
    pm = get_plugin_manager()
    pm.register(plugin, name=name)
    pm.check_pending()
    from tdfusion_core import registry

    registry.clear_caches()


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered with :func:`register_plugin`."""
    get_plugin_manager().unregister(name=name)
    from tdfusion_core import registry

    registry.clear_caches()


def _plugin_version(name: str, plugin: Any) -> str | None:
    if name in _plugin_versions:
        return _plugin_versions[name]
    if getattr(plugin, "__name__", "").startswith("tdfusion_core"):
        from tdfusion_core import __version__

        return __version__
    return None


def describe_plugins() -> list[dict[str, Any]]:
    """Describe every plugin: name, version, implemented hooks, registered names, and any load error."""
    from tdfusion_core import registry

    pm = get_plugin_manager()
    rows: list[dict[str, Any]] = []
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin) or repr(plugin)
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        rows.append(
            {
                "name": name,
                "version": _plugin_version(name, plugin),
                "hooks": hooks,
                "registers": registry.names_registered_by(plugin),
                "error": None,
            }
        )
    for name, error in sorted(failed_plugins.items()):
        rows.append({"name": name, "version": None, "hooks": [], "registers": {}, "error": error})
    rows.sort(key=lambda row: (not str(row["name"]).startswith("tdfusion_core"), str(row["name"])))
    return rows
