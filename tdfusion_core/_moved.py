"""Old import paths of the modules that moved into layer folders (docs/architecture.md), kept for one release.

``import tdfusion_core.trainer`` (or any old path in this table, and the modules below an old package path) still
works: it gives the module at its new path, with a DeprecationWarning naming that path. Remove this module and its
install call in ``tdfusion_core/__init__.py`` in the release after the move.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from importlib.abc import Loader

#: old dotted path -> new dotted path
MOVED: dict[str, str] = {
    "tdfusion_core.atomic": "tdfusion_core.common.atomic",
    "tdfusion_core.batches": "tdfusion_core.training.batches",
    "tdfusion_core.bench": "tdfusion_core.apps.bench",
    "tdfusion_core.builders": "tdfusion_core.training.builders",
    "tdfusion_core.builtin_datasets": "tdfusion_core.plugin.builtin_datasets",
    "tdfusion_core.builtin_nets": "tdfusion_core.plugin.builtin_nets",
    "tdfusion_core.builtin_tasks": "tdfusion_core.plugin.builtin_tasks",
    "tdfusion_core.checkpoints": "tdfusion_core.training.checkpoints",
    "tdfusion_core.cli": "tdfusion_core.commands.cli",
    "tdfusion_core.cli_docs": "tdfusion_core.commands.cli_docs",
    "tdfusion_core.colour": "tdfusion_core.common.colour",
    "tdfusion_core.config": "tdfusion_core.training.config",
    "tdfusion_core.config_docs": "tdfusion_core.training.config_docs",
    "tdfusion_core.config_io": "tdfusion_core.training.config_io",
    "tdfusion_core.demo": "tdfusion_core.apps.demo",
    "tdfusion_core.devices": "tdfusion_core.common.devices",
    "tdfusion_core.distributed": "tdfusion_core.training.distributed",
    "tdfusion_core.downstream": "tdfusion_core.apps.downstream",
    "tdfusion_core.evaluate": "tdfusion_core.apps.evaluate",
    "tdfusion_core.experiment": "tdfusion_core.apps.experiment",
    "tdfusion_core.export": "tdfusion_core.apps.export",
    "tdfusion_core.figures": "tdfusion_core.apps.figures",
    "tdfusion_core.functional": "tdfusion_core.kernel.functional",
    "tdfusion_core.fusion": "tdfusion_core.apps.fuse",
    "tdfusion_core.fusion_phase": "tdfusion_core.kernel.fusion_phase",
    "tdfusion_core.generator_stats": "tdfusion_core.training.generator_stats",
    "tdfusion_core.hookspecs": "tdfusion_core.plugin.hookspecs",
    "tdfusion_core.inspection": "tdfusion_core.training.inspection",
    "tdfusion_core.io": "tdfusion_core.common.io",
    "tdfusion_core.losses": "tdfusion_core.kernel.losses",
    "tdfusion_core.meta": "tdfusion_core.kernel.meta",
    "tdfusion_core.meta_phase": "tdfusion_core.kernel.meta_phase",
    "tdfusion_core.multitask": "tdfusion_core.kernel.multitask",
    "tdfusion_core.plugins": "tdfusion_core.plugin.manager",
    "tdfusion_core.precision": "tdfusion_core.common.precision",
    "tdfusion_core.provenance": "tdfusion_core.training.provenance",
    "tdfusion_core.registry": "tdfusion_core.plugin.registry",
    "tdfusion_core.run_files": "tdfusion_core.training.run_files",
    "tdfusion_core.run_logger": "tdfusion_core.training.run_logger",
    "tdfusion_core.sampling": "tdfusion_core.data.sampling",
    "tdfusion_core.sizes": "tdfusion_core.common.sizes",
    "tdfusion_core.speed": "tdfusion_core.common.speed",
    "tdfusion_core.state_guard": "tdfusion_core.training.state_guard",
    "tdfusion_core.stats": "tdfusion_core.apps.stats",
    "tdfusion_core.task": "tdfusion_core.kernel.task",
    "tdfusion_core.tb_logger": "tdfusion_core.training.tb_logger",
    "tdfusion_core.template": "tdfusion_core.apps.new_plugin",
    "tdfusion_core.templates": "tdfusion_core.apps.templates",
    "tdfusion_core.torch_files": "tdfusion_core.common.torch_files",
    "tdfusion_core.train_state": "tdfusion_core.training.train_state",
    "tdfusion_core.trainer": "tdfusion_core.training.trainer",
    "tdfusion_core.trust": "tdfusion_core.training.trust",
    "tdfusion_core.user_errors": "tdfusion_core.commands.user_errors",
    "tdfusion_core.validation": "tdfusion_core.training.validation",
    "tdfusion_core.visual": "tdfusion_core.training.visual",
}


def new_path(name: str) -> str | None:
    """The new dotted path of an old module path (also of a module below a moved package), or None."""
    for old, new in MOVED.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old) :]
    return None


class OldPaths:
    """Imports an old path as the module at its new path (one module object under both names).

    A meta path finder and loader by protocol (no ``importlib.abc``/``importlib.util``: they cost the CLI start time).
    """

    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if new_path(fullname) is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, cast("Loader", self))

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = new_path(spec.name)
        assert new is not None
        warnings.warn(f"{spec.name} moved to {new}; import it from there", DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # the import system set the old path's spec on the module: give it back its own
        old = module.__spec__.name if module.__spec__ else None
        if old in self._specs:
            module.__spec__ = self._specs.pop(old)


def install() -> None:
    if not any(isinstance(finder, OldPaths) for finder in sys.meta_path):
        sys.meta_path.insert(0, OldPaths())
