"""Hook specifications of the ``tdfusion`` plugin system.

A plugin is any module or object with functions decorated by :data:`tdfusion_core.hookimpl` whose names match the
hooks below. Installed plugins are found through the ``tdfusion`` entry-point group; see
:mod:`tdfusion_core.plugin.manager`. Every hook documents its contract; ``tests/test_hookspecs.py`` fails on a hook without
a docstring.

Registration hooks return a mapping ``{name: factory}``. Names must be unique across all plugins: a clash raises
:class:`tdfusion_core.plugin.registry.RegistryError` naming both plugins. Event hooks return nothing and must not change the
trainer's state. An exception raised inside any hook of an *installed* plugin (entry point) is caught, warned about
and shown by ``tdfusion plugins``, so one broken plugin never stops a run or the command line; a plugin registered
in-process with :func:`tdfusion_core.plugin.manager.register_plugin` is not guarded, and its exceptions propagate.

A plugin whose framework or one of its runtime dependencies is missing says so twice: cheaply through
:func:`tdfusion_plugin_ready` (``tdfusion plugins`` reports it as not ready, with the fix), and, when it is used anyway,
by raising :class:`PluginNotReadyError`, which the command line prints as a one-line error without a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("tdfusion")

#: registry kind -> the registration hook that fills it (read by :mod:`tdfusion_core.plugin.registry` and
#: :func:`tdfusion_core.plugin.manager.registered_names`)
REGISTRATION_HOOKS: dict[str, str] = {
    "task": "tdfusion_register_tasks",
    "fusion_net": "tdfusion_register_fusion_nets",
    "loss_generator": "tdfusion_register_loss_generators",
    "dataset": "tdfusion_register_datasets",
}


class PluginNotReadyError(RuntimeError):
    """A plugin cannot work in this environment (a runtime dependency is missing or broken).

    The message is one line that names what is missing and the command that fixes it; ``tdfusion`` prints it as
    ``Error: <message>`` and exits with status 1, without a traceback. Plugins may subclass it (together with
    ``ImportError``, say) for their own errors.
    """


@hookspec
def tdfusion_register_tasks() -> Mapping[str, Any]:
    """Register downstream task types.

    Return a mapping from task name to a :class:`tdfusion_core.kernel.task.Task` subclass (or a callable that takes the
    task's keyword configuration and returns a ``Task`` instance). The class is checked when the registry is built:
    an abstract class, one missing a required method, raises an error naming the missing methods there and then.
    """
    raise NotImplementedError


@hookspec
def tdfusion_register_fusion_nets() -> Mapping[str, Any]:
    """Register fusion-network architectures.

    Return a mapping from architecture name to a callable ``factory(num_sources: int, **config) -> nn.Module``. The
    module takes ``(B, K, H, W)`` source luminances in ``[0, 1]`` and returns the fused luminance ``(B, 1, H, W)``.
    It may expose ``size_multiple: int`` (inputs are padded to a multiple of it for inference).
    """
    raise NotImplementedError


@hookspec
def tdfusion_register_loss_generators() -> Mapping[str, Any]:
    """Register loss-generator architectures.

    Return a mapping from architecture name to a callable ``factory(num_sources: int, **config) -> nn.Module``. The
    module takes ``(B, K, H, W)`` sources and returns per-pixel weights ``(B, K, H, W)`` that are non-negative and
    sum to one over the source dimension (a softmax).
    """
    raise NotImplementedError


@hookspec
def tdfusion_register_datasets() -> Mapping[str, Any]:
    """Register datasets and dataset presets.

    Return a mapping from dataset name to a callable ``factory(root: str | None = None, split: str = "train",
    **options) -> torch.utils.data.Dataset`` whose items are :class:`tdfusion_core.data.Sample` objects. A name may
    be passed where a path is expected (``tdfusion train --data NAME``).
    """
    raise NotImplementedError


@hookspec
def tdfusion_plugin_ready() -> str | None:
    """Optional: whether this plugin can work in this environment, checked without importing heavy frameworks.

    Return ``None`` when it can; otherwise one line naming what is missing and the command that fixes it, e.g.
    ``"mmcv is not installed: pip install 'tdfusion-mmseg[lite]'"``. Keep it cheap (``importlib.util.find_spec``,
    ``importlib.metadata.version``): ``tdfusion plugins`` calls it for every plugin that implements it and reports the
    plugin as ``ready: false`` with this text. Implement it with ``@hookimpl(optionalhook=True)`` so the plugin still
    loads with an older tdfusion-core that lacks this hook. An exception raised here is reported as the problem.
    """


@hookspec
def tdfusion_register_commands(cli: Any) -> None:
    """Add subcommands to the ``tdfusion`` command line.

    ``cli`` is the root :class:`click.Group`; add commands with ``@cli.command()`` or ``cli.add_command``. Called once
    when the command line is built. Command names must not clash with existing ones.
    """


@hookspec
def tdfusion_on_run_start(trainer: Any, config: Any) -> None:
    """Called once before the first epoch of a training run (also after ``--resume``).

    ``trainer`` is the :class:`tdfusion_core.training.trainer.MetaTrainer`, ``config`` its resolved configuration. Use it to
    open loggers. Do not modify parameters or optimizers.
    """


@hookspec
def tdfusion_on_run_end(trainer: Any, status: str) -> None:
    """Called once when a training run ends; ``status`` is ``"completed"``, ``"stopped"`` or ``"failed"``.

    Use it to close loggers and flush files. It is also called when the run fails, before the exception propagates.
    """


@hookspec
def tdfusion_on_epoch_start(trainer: Any, epoch: int) -> None:
    """Called at the start of each epoch (0-based ``epoch``), before its meta phase."""


@hookspec
def tdfusion_on_epoch_end(trainer: Any, epoch: int, metrics: Mapping[str, float]) -> None:
    """Called at the end of each epoch with the epoch's mean losses and statistics in ``metrics``.

    Called before the epoch's checkpoint is written.
    """


@hookspec
def tdfusion_on_meta_step_end(trainer: Any, step: int, metrics: Mapping[str, float]) -> None:
    """Called after each meta step (inner update of F and T', outer update of G).

    ``step`` counts meta steps since the start of the run; ``metrics`` holds at least ``task_loss`` (the meta-test
    task loss) and ``fusion_loss`` (the meta-train fusion loss). A skipped non-finite step is reported too, with
    ``skipped = 1.0``.
    """


@hookspec
def tdfusion_on_fusion_step_end(trainer: Any, step: int, metrics: Mapping[str, float]) -> None:
    """Called after each fusion-phase step (update of F by the fusion loss and of T by the task loss).

    ``step`` counts fusion steps since the start of the run; ``metrics`` holds at least ``fusion_loss`` and
    ``task_loss``.
    """


@hookspec
def tdfusion_on_checkpoint_saved(trainer: Any, path: str, epoch: int) -> None:
    """Called after a checkpoint has been written atomically to ``path`` (after the rename).

    Use it to copy or upload checkpoints; the file is complete when this hook runs.
    """
