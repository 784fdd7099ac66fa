"""tdfusion-core: task-driven image fusion with a learnable fusion loss (TDFusion, CVPR 2025).

Public entry points are re-exported here lazily (``from tdfusion_core import MetaTrainer, TrainConfig, Task``), so
``import tdfusion_core`` stays cheap (torch is imported only when a name that needs it is first used) and plugins
can import :data:`hookimpl` without pulling in the rest.
"""

from __future__ import annotations

import importlib
from typing import Any

import pluggy

from tdfusion_core._moved import install as _install_old_paths

__version__ = "0.1.0"

#: old import paths (tdfusion_core.trainer, ...) work for one release, with a warning
_install_old_paths()

#: Marker for hook implementations in plugins: ``@hookimpl def tdfusion_register_tasks(): ...``
hookimpl = pluggy.HookimplMarker("tdfusion")

# name -> defining module (a table, alike in shape only to other name tables such as hookspecs.REGISTRATION_HOOKS)
_LAZY: dict[str, str] = {
    # training
    "MetaTrainer": "tdfusion_core.training.trainer",
    "TrainingDivergedError": "tdfusion_core.training.trainer",
    "TrainConfig": "tdfusion_core.training.config",
    "ConfigError": "tdfusion_core.training.config_io",
    "FusionLoss": "tdfusion_core.kernel.losses",
    "MetaStep": "tdfusion_core.kernel.meta",
    "Validator": "tdfusion_core.training.validation",
    "resolve_dataset": "tdfusion_core.plugin.registry",
    # models and inference
    "load_model_checkpoint": "tdfusion_core.training.checkpoints",
    "save_model_checkpoint": "tdfusion_core.training.checkpoints",
    "export_fusion_net": "tdfusion_core.apps.export",
    "pick_device": "tdfusion_core.common.devices",
    "compute_fusion_metrics": "tdfusion_core.metrics.fusion",
    # tasks, registry, plugins, data
    "Task": "tdfusion_core.kernel.task",
    "functional_task_loss": "tdfusion_core.kernel.task",
    "get_task": "tdfusion_core.plugin.registry",
    "get_fusion_net": "tdfusion_core.plugin.registry",
    "get_loss_generator": "tdfusion_core.plugin.registry",
    "get_dataset": "tdfusion_core.plugin.registry",
    "RegistryError": "tdfusion_core.plugin.registry",
    "fuse_images": "tdfusion_core.apps.fuse",
    "Fuser": "tdfusion_core.apps.fuse",
    "FusedImage": "tdfusion_core.apps.fuse",
    "fuse_pair": "tdfusion_core.apps.fuse",
    "get_plugin_manager": "tdfusion_core.plugin.manager",
    "register_plugin": "tdfusion_core.plugin.manager",
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
