"""tdfusion-yolo: ultralytics YOLO detectors (YOLOv8 n/s/m/l/x by default) as the task network of TDFusion.

Importing this package makes ultralytics fully offline *before* ultralytics itself can be imported (every module of
the package, the plugin entry point included, runs this file first):

* ``YOLO_OFFLINE=1``: ultralytics skips its online check, so its telemetry (``events``), hub calls and auto-updates
  are disabled;
* ``YOLO_CONFIG_DIR``: a private temporary folder, removed at exit, so ultralytics writes its ``settings.json`` there
  and never into the user's home. A ``YOLO_CONFIG_DIR`` the user set explicitly is respected.

If ultralytics was already imported before this package, the environment comes too late; :func:`ensure_offline`
then switches its ``ONLINE`` flags off in place and warns (its settings file may already exist in the user's config
folder in that case).

The task itself is :class:`tdfusion_yolo.task.YoloTask`, registered as ``yolo`` by :mod:`tdfusion_yolo.plugin`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import warnings

__version__ = "0.1.0"

#: the private configuration folder created for ultralytics by this process (``None`` if the user set their own)
PRIVATE_CONFIG_DIR: str | None = None
#: True when ultralytics had been imported before this package could set the environment
ULTRALYTICS_IMPORTED_EARLY = "ultralytics" in sys.modules


def _set_offline_environment() -> None:
    global PRIVATE_CONFIG_DIR
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ.setdefault("YOLO_VERBOSE", "False")
    if not os.environ.get("YOLO_CONFIG_DIR"):
        PRIVATE_CONFIG_DIR = tempfile.mkdtemp(prefix="tdfusion-yolo-")
        os.environ["YOLO_CONFIG_DIR"] = PRIVATE_CONFIG_DIR
        atexit.register(shutil.rmtree, PRIVATE_CONFIG_DIR, True)


_set_offline_environment()


def ensure_offline() -> None:
    """Import ultralytics (offline) and make sure its online flags are off, even if it was imported before us.

    Called by the task before it builds a model, computes a loss or evaluates.
    """
    import ultralytics.utils as ul_utils

    if ul_utils.ONLINE:  # only possible when ultralytics was imported before this package set YOLO_OFFLINE
        warnings.warn(
            "ultralytics was imported before tdfusion_yolo could set YOLO_OFFLINE=1 and a private YOLO_CONFIG_DIR; "
            "its online features are switched off now, but its settings file may already be in your config folder. "
            "Import tdfusion_yolo (or set YOLO_OFFLINE=1) before ultralytics.",
            RuntimeWarning,
            stacklevel=2,
        )
    ul_utils.ONLINE = False
    for name in ("ultralytics.utils.events", "ultralytics.utils.checks"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "ONLINE", False):
            module.ONLINE = False  # type: ignore[attr-defined]
    events_module = sys.modules.get("ultralytics.utils.events")
    events = getattr(events_module, "events", None)
    if events is not None and getattr(events, "enabled", False):
        events.enabled = False


#: modules the task imports when it builds a network, and the line that installs them
REQUIRED_MODULES = ("ultralytics", "torchvision")
INSTALL_LINE = 'pip install torch==2.14.1 torchvision==0.29.1 "tdfusion-yolo"'


def problem() -> str | None:
    """``None`` when ultralytics and torchvision are installed, else one line with the fix (nothing imported)."""
    import importlib.util

    missing = [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        return f"{', '.join(missing)} not installed (needed by the yolo task): {INSTALL_LINE}"
    return None


def ensure_ready() -> None:
    """Raise :class:`tdfusion_core.plugin.hookspecs.PluginNotReadyError` (one line, with the fix) when :func:`problem`
    finds one."""
    from tdfusion_core.plugin.hookspecs import PluginNotReadyError

    found = problem()
    if found is not None:
        raise PluginNotReadyError(found)


__all__ = ["PRIVATE_CONFIG_DIR", "__version__", "ensure_offline", "ensure_ready", "problem"]
