"""The plugin manager: built-in plugins, entry-point discovery, the allow-list, and isolation of broken plugins.

Plugins are installed distributions that declare an entry point in the group ``tdfusion``::

    [project.entry-points.tdfusion]
    yolo = "tdfusion_yolo.plugin"

``TDFUSION_LOAD_PLUGINS`` limits which installed plugins load: unset loads all of them, a comma-separated list loads
only the named entry points, and an empty value (``TDFUSION_LOAD_PLUGINS=``) loads only the built-ins: the escape
when an installed plugin breaks or hangs every command. ``TDFUSION_TRACE_PLUGINS=1`` prints each plugin on stderr
before it is imported (and the time its import took), so a plugin whose import hangs is the last one named.

A plugin cannot take the host down. Anything an installed plugin raises while it is imported or registered (any
exception, ``SystemExit`` included; only ``KeyboardInterrupt`` passes) skips that plugin with a
:class:`PluginLoadWarning` naming it and the error; it is listed by ``tdfusion plugins`` with its error. Every hook
implementation of an installed plugin is guarded the same way: an exception inside it (a registration hook, the
command hook, an event hook) is caught, warned about once per plugin and hook, recorded (``tdfusion plugins``
shows it in the plugin's ``error``), and the hook returns nothing for that plugin, so the other plugins, the
built-ins and a running training carry on. Plugins registered in-process with :func:`register_plugin` are not
guarded: their errors propagate, as a script's own errors should.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import pluggy

from tdfusion_core.plugin import hookspecs

ENTRY_POINT_GROUP = "tdfusion"
ALLOW_LIST_ENV = "TDFUSION_LOAD_PLUGINS"
TRACE_ENV = "TDFUSION_TRACE_PLUGINS"

#: Modules of tdfusion_core that implement hooks; each is registered as a built-in plugin.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "tdfusion_core.plugin.builtin_tasks",
    "tdfusion_core.plugin.builtin_nets",
    "tdfusion_core.plugin.builtin_datasets",
    "tdfusion_core.commands.data",
    "tdfusion_core.commands.plugins_cmd",
    "tdfusion_core.commands.eval",
    "tdfusion_core.commands.downstream",
    "tdfusion_core.commands.fuse",
    "tdfusion_core.commands.bench",
    "tdfusion_core.commands.train",
    "tdfusion_core.commands.val",
    "tdfusion_core.commands.export",
    "tdfusion_core.commands.demo",
    "tdfusion_core.commands.experiment",
    "tdfusion_core.commands.new_plugin",
    "tdfusion_core.training.tb_logger",
    "tdfusion_core.training.run_logger",
)

_lock = threading.Lock()
_pm: pluggy.PluginManager | None = None
#: Entry-point name -> error message, for plugins that failed to load.
failed_plugins: dict[str, str] = {}
#: Entry-point name -> version of the distribution that provides it.
_plugin_versions: dict[str, str] = {}
#: Plugin name -> errors raised inside its hook implementations ("hook: Type: message"), first one per hook.
hook_errors: dict[str, list[str]] = {}


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


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    """The installed entry points of the ``tdfusion`` group (one place, so tests can fake installed plugins)."""
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _tracing() -> bool:
    return os.environ.get(TRACE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit: the plugin called sys.exit({exc.code!r})"
    return f"{type(exc).__name__}: {exc}"


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    allowed = allowed_plugin_names()
    failed_plugins.clear()
    hook_errors.clear()
    trace = _tracing()
    for ep in _entry_points():
        if allowed is not None and ep.name not in allowed:
            continue
        if pm.has_plugin(ep.name):
            continue
        if trace:
            print(f"tdfusion: loading plugin {ep.name!r} ({ep.value}) ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
            pm.check_pending()
            _guard_hooks(pm, plugin, ep.name)
            if ep.dist is not None:
                _plugin_versions[ep.name] = ep.dist.version
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a broken plugin (even one calling sys.exit) must never break the others
            if pm.has_plugin(ep.name):
                pm.unregister(name=ep.name)
            message = _describe_error(exc)
            failed_plugins[ep.name] = message
            warnings.warn(
                f"tdfusion plugin {ep.name!r} ({ep.value}) could not be loaded and is skipped: {message}. "
                f"{ALLOW_LIST_ENV} limits which plugins load.",
                PluginLoadWarning,
                stacklevel=2,
            )
        if trace:
            status = "failed" if ep.name in failed_plugins else "loaded"
            print(
                f"tdfusion: plugin {ep.name!r} {status} in {time.perf_counter() - start:.2f} s",
                file=sys.stderr,
                flush=True,
            )


def _guard_hooks(pm: pluggy.PluginManager, plugin: Any, name: str) -> None:
    """Wrap each (non-wrapper) hook implementation of ``plugin`` so that what it raises is caught and recorded."""
    for caller in pm.get_hookcallers(plugin) or []:
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin and not (impl.hookwrapper or impl.wrapper):
                impl.function = _guarded(impl.function, name, caller.name)  # type: ignore[misc]


def _guarded(function: Callable[..., Any], plugin_name: str, hook_name: str) -> Callable[..., Any]:
    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            _record_hook_error(plugin_name, hook_name, exc)
            return None

    return call


def _record_hook_error(plugin_name: str, hook_name: str, exc: BaseException) -> None:
    message = f"{hook_name}: {_describe_error(exc)}"
    seen = hook_errors.setdefault(plugin_name, [])
    if any(entry.startswith(f"{hook_name}:") for entry in seen):
        return  # warned once per plugin and hook
    seen.append(message)
    warnings.warn(
        f"tdfusion plugin {plugin_name!r} raised in {message}; ignored, the other plugins carry on",
        PluginLoadWarning,
        stacklevel=3,
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

    Registries built from it are rebuilt on next use (mainly for tests and notebooks).
    """
    global _pm
    with _lock:
        _pm = None


def register_plugin(plugin: Any, name: str | None = None) -> None:
    """Register a plugin object (a module, class or instance with ``hookimpl`` functions) without packaging it.

    Useful in scripts and notebooks (see ``examples/run_custom_task.py``). Registries are rebuilt on next use.
    """
    pm = get_plugin_manager()
    pm.register(plugin, name=name)
    pm.check_pending()


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered with :func:`register_plugin`."""
    get_plugin_manager().unregister(name=name)


def _plugin_version(name: str, plugin: Any) -> str | None:
    if name in _plugin_versions:
        return _plugin_versions[name]
    if getattr(plugin, "__name__", "").startswith("tdfusion_core"):
        from tdfusion_core import __version__

        return __version__
    return None


def registered_names(pm: pluggy.PluginManager, plugin: Any) -> dict[str, list[str]]:
    """``{kind: [names]}`` that ``plugin``'s registration hooks return (unvalidated; the registries check them)."""
    found: dict[str, list[str]] = {}
    for kind, hook_name in hookspecs.REGISTRATION_HOOKS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            if impl.plugin is plugin:
                names = sorted(impl.function() or {})
                if names:
                    found[kind] = names
    return found


def describe_plugins() -> list[dict[str, Any]]:
    """Describe every plugin: name, version, implemented hooks, registered names, and any load error."""
    pm = get_plugin_manager()
    rows: list[dict[str, Any]] = []
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin) or repr(plugin)
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        try:
            registers = registered_names(pm, plugin)
            error = None
        except Exception as exc:  # a registration hook that raises: reported, not fatal
            registers, error = {}, f"{type(exc).__name__}: {exc}"
        errors = [*hook_errors.get(name, []), *([error] if error else [])]
        rows.append(
            {
                "name": name,
                "version": _plugin_version(name, plugin),
                "hooks": hooks,
                "registers": registers,
                "error": "; ".join(errors) if errors else None,
            }
        )
    for name, error in sorted(failed_plugins.items()):
        rows.append({"name": name, "version": None, "hooks": [], "registers": {}, "error": error})
    rows.sort(key=lambda row: (not str(row["name"]).startswith("tdfusion_core"), str(row["name"])))
    return rows
