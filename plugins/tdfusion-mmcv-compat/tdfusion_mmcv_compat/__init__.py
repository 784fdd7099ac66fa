"""Run MMSegmentation / MMDetection on ``mmcv-lite`` (no compiled ops) or on a compiled mmcv, without editing either.

mmseg 1.2.2 and mmdet 3.3.0 need mmcv ``>=2.0.0rc4,<2.2.0``, and PyPI has no compiled mmcv wheel for current torch.
Two install routes work (see the README of tdfusion-mmseg / tdfusion-mmdet):

* **compiled mmcv** built from source: :func:`install` sees the real ``mmcv._ext`` and does nothing;
* **mmcv-lite** (same Python code, no ``mmcv._ext``): :func:`install` adds an import hook (a finder at the *end* of
  ``sys.meta_path``, so a real extension always wins) that answers ``import mmcv._ext`` with
  :class:`~tdfusion_mmcv_compat.ext.FallbackExtModule`: pure PyTorch / torchvision versions of the compiled ops the
  common models use (NMS, soft-NMS, RoIAlign, RoIPool, box overlaps, sigmoid focal loss, multi-scale deformable
  attention), and for every other op a stub that raises :class:`MissingCompiledOpError` naming the op and the models
  that need it.

:func:`install` must run before ``mmcv.ops`` (and so ``mmseg`` / ``mmdet``) is first imported; the tdfusion plugins
call it before importing them. ``TDFUSION_MMCV_FALLBACK=force`` uses the fallback even where a compiled extension
exists (for instance one built for another torch that no longer loads); ``=off`` never installs it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType
from typing import Literal

from tdfusion_mmcv_compat.ext import FALLBACK_OPS, FallbackExtModule, MissingCompiledOpError

__version__ = "0.1.0"
__all__ = [
    "FALLBACK_OPS",
    "MissingCompiledOpError",
    "MmcvNotInstalledError",
    "backend",
    "install",
    "uninstall",
]

EXT_NAME = "mmcv._ext"
ENV_VAR = "TDFUSION_MMCV_FALLBACK"
Backend = Literal["compiled", "fallback", "none"]

INSTALL_HELP = (
    "Install one of: (a) mmcv-lite with the fallback ops: `pip install 'tdfusion-mmcv-compat[lite]'` "
    "(or `pip install mmcv-lite==2.1.0`); (b) a compiled mmcv<2.2 built from source for your torch "
    "(setuptools<81, `pip install --no-build-isolation`, C++20; see the tdfusion-mmseg README)."
)


class MmcvNotInstalledError(ImportError):
    """Neither mmcv nor mmcv-lite is installed, or the installed one cannot serve mmseg / mmdet."""


class _FallbackLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return FallbackExtModule(spec.name)

    def exec_module(self, module: ModuleType) -> None:
        return None


class FallbackExtFinder(importlib.abc.MetaPathFinder):
    """Finds ``mmcv._ext`` only when no earlier finder did (it sits last on ``sys.meta_path``, unless forced)."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != EXT_NAME:
            return None
        return importlib.machinery.ModuleSpec(fullname, _FallbackLoader(), origin="tdfusion-mmcv-compat fallback")


_finder: FallbackExtFinder | None = None


def _mmcv_installed() -> bool:
    return importlib.util.find_spec("mmcv") is not None


def _real_ext_exists() -> bool:
    """Whether mmcv ships a compiled ``_ext`` file (looked up by the normal path finder, without importing it)."""
    spec = importlib.util.find_spec("mmcv")
    if spec is None or not spec.submodule_search_locations:
        return False
    return importlib.machinery.PathFinder.find_spec(EXT_NAME, list(spec.submodule_search_locations)) is not None


def backend() -> Backend:
    """``"compiled"`` (a real ``mmcv._ext`` is or will be used), ``"fallback"`` (ours), or ``"none"`` (no mmcv)."""
    loaded = sys.modules.get(EXT_NAME)
    if loaded is not None:
        return "fallback" if isinstance(loaded, FallbackExtModule) else "compiled"
    if not _mmcv_installed():
        return "none"
    if _finder is not None and (os.environ.get(ENV_VAR, "").lower() == "force" or not _real_ext_exists()):
        return "fallback"
    return "compiled" if _real_ext_exists() else "none"


def install() -> Backend:
    """Make ``import mmcv.ops`` work: keep a compiled mmcv, otherwise install the fallback import hook. Idempotent.

    Returns the backend that will serve ``mmcv._ext``. Raises :class:`MmcvNotInstalledError` when mmcv is missing.
    """
    global _finder
    mode = os.environ.get(ENV_VAR, "").strip().lower()
    if not _mmcv_installed():
        raise MmcvNotInstalledError(f"mmcv is not installed. {INSTALL_HELP}")
    if mode == "off":
        return backend()
    if _finder is None:
        _finder = FallbackExtFinder()
        if mode == "force":
            sys.meta_path.insert(0, _finder)
        else:
            sys.meta_path.append(_finder)
    loaded = sys.modules.get(EXT_NAME)
    if mode == "force" and loaded is not None and not isinstance(loaded, FallbackExtModule):
        raise MmcvNotInstalledError(
            f"{ENV_VAR}=force was set after the compiled mmcv._ext had been imported; set it before importing mmcv"
        )
    return backend()


def uninstall() -> None:
    """Remove the import hook (an already imported ``mmcv._ext`` stays in ``sys.modules``)."""
    global _finder
    if _finder is not None and _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
    _finder = None
