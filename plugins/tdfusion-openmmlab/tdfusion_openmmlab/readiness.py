"""Whether mmseg / mmdet can run here, checked without importing them, and the one-line fix when they cannot.

mmseg 1.2.2 and mmdet 3.3.0 need ``mmcv>=2.0.0rc4,<2.2.0``: either ``mmcv-lite`` (with the fallback ops of
:mod:`tdfusion_mmcv_compat`, what the ``[lite]`` extra installs) or a compiled mmcv built from source.
:func:`problem` looks at what is installed (``importlib.util.find_spec`` and the distributions' versions) and is cheap
enough for ``tdfusion plugins``; the tasks call :func:`ensure_ready` when they are created, so a run stops before any
work with the same message.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re

from tdfusion_core.plugin.hookspecs import PluginNotReadyError

#: first mmcv version mmseg 1.2.2 / mmdet 3.3.0 refuse (they assert ``mmcv < 2.2.0`` on import)
MMCV_TOO_NEW = (2, 2)
#: modules each framework imports at import time besides mmcv and mmengine
REQUIRED_MODULES: dict[str, tuple[str, ...]] = {
    "mmseg": ("mmengine", "mmseg", "ftfy", "regex"),
    "mmdet": ("mmengine", "mmdet"),
}


class OpenMMLabNotReadyError(PluginNotReadyError, ImportError):
    """mmcv, mmengine or the OpenMMLab framework is missing or unusable; the message holds the install line."""


def install_line(package: str) -> str:
    """The one command that installs the plugin of ``package`` with the mmcv route that needs no compiler."""
    return f'pip install "tdfusion-{package}[lite]"'


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text.split("rc")[0])[:3])


def mmcv_version() -> str | None:
    """Version of the installed ``mmcv`` or ``mmcv-lite`` distribution (None when neither is installed)."""
    for dist in ("mmcv", "mmcv-lite"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def problem(package: str) -> str | None:
    """``None`` when ``package`` (``"mmseg"`` or ``"mmdet"``) can be imported here, else one line with the fix."""
    line = install_line(package)
    if importlib.util.find_spec("mmcv") is None:
        return (
            f"mmcv is not installed (needed by {package}): {line} (mmcv-lite plus fallback ops), "
            f"or build mmcv<2.2 from source (see the tdfusion-{package} README)"
        )
    version = mmcv_version()
    if version is not None and _version(version)[:2] >= MMCV_TOO_NEW:
        return (
            f"mmcv {version} is too new for {package} (it needs mmcv>=2.0.0rc4,<2.2.0): "
            f'pip install "mmcv-lite==2.1.0" (or build mmcv 2.1 from source)'
        )
    missing = [name for name in REQUIRED_MODULES[package] if importlib.util.find_spec(name) is None]
    if missing:
        return f"{', '.join(missing)} not installed (needed by {package}): {line}"
    return None


def ensure_ready(package: str) -> None:
    """Raise :class:`OpenMMLabNotReadyError` (one line, with the fix) when :func:`problem` finds one."""
    found = problem(package)
    if found is not None:
        raise OpenMMLabNotReadyError(found)
