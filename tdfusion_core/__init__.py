"""tdfusion-core: task-driven image fusion with a learnable fusion loss (TDFusion, CVPR 2025).

Public entry points are re-exported here lazily, so ``import tdfusion_core`` stays cheap and plugins can import
:data:`hookimpl` without pulling in the rest.
"""

from __future__ import annotations

import importlib
from typing import Any

import pluggy

__version__ = "0.1.0"

#: Marker for hook implementations in plugins: ``@hookimpl def tdfusion_register_tasks(): ...``
hookimpl = pluggy.HookimplMarker("tdfusion")

_LAZY: dict[str, str] = {
    "Task": "tdfusion_core.task",
    "functional_task_loss": "tdfusion_core.task",
    "get_task": "tdfusion_core.registry",
    "get_fusion_net": "tdfusion_core.registry",
    "get_loss_generator": "tdfusion_core.registry",
    "get_dataset": "tdfusion_core.registry",
    "RegistryError": "tdfusion_core.registry",
    "fuse_images": "tdfusion_core.fusion",
    "Fuser": "tdfusion_core.fusion",
    "FusedImage": "tdfusion_core.fusion",
    "fuse_pair": "tdfusion_core.fusion",
    "get_plugin_manager": "tdfusion_core.plugins",
    "register_plugin": "tdfusion_core.plugins",
    "Sample": "tdfusion_core.data",
    "Batch": "tdfusion_core.data",
}

__all__ = ["__version__", "hookimpl", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tdfusion_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
