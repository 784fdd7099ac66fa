"""tdfusion-core: task-driven image fusion with a learnable fusion loss (TDFusion, CVPR 2025).

Public entry points are re-exported here lazily (``from tdfusion_core import MetaTrainer, TrainConfig, Task``), so
``import tdfusion_core`` stays cheap (torch is imported only when a name that needs it is first used) and plugins
can import :data:`hookimpl` without pulling in the rest.
"""

from __future__ import annotations

import importlib
from typing import Any

import pluggy

__version__ = "0.1.0"

#: Marker for hook implementations in plugins: ``@hookimpl def tdfusion_register_tasks(): ...``
hookimpl = pluggy.HookimplMarker("tdfusion")

# name -> defining module (a table, alike in shape only to other name tables such as hookspecs.REGISTRATION_HOOKS)
_LAZY: dict[str, str] = {
    # training
    "MetaTrainer": "tdfusion_core.trainer",
    "TrainingDivergedError": "tdfusion_core.trainer",
    "TrainConfig": "tdfusion_core.config",
    "ConfigError": "tdfusion_core.config_io",
    "FusionLoss": "tdfusion_core.losses",
    "MetaStep": "tdfusion_core.meta",
    "Validator": "tdfusion_core.validation",
    "resolve_dataset": "tdfusion_core.registry",
    # models and inference
    "load_model_checkpoint": "tdfusion_core.checkpoints",
    "save_model_checkpoint": "tdfusion_core.checkpoints",
    "export_fusion_net": "tdfusion_core.export",
    "pick_device": "tdfusion_core.devices",
    "compute_fusion_metrics": "tdfusion_core.metrics.fusion",
    # tasks, registry, plugins, data
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
