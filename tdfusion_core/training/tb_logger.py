"""Built-in plugin: TensorBoard logs of a training run, written under ``<run dir>/tensorboard``.

Logs meta-step and fusion-step losses, per-epoch means (validation metrics included), learning rates, the mean
weight G gives each source, throughput (steps per second) and, with ``log_images``, one image per epoch
(``images/weights``: sources | fused | weight maps of a few training samples, titled columns, 0-1 colour bar).
``tensorboard`` is a dependency of tdfusion-core; without it, or for a trainer with no run directory, nothing is
logged. A logger shows how any plugin can follow a run through the event hooks.

Each step axis has its own event stream: epochs (and images) in ``tensorboard/``, meta steps in
``tensorboard/meta_steps``, fusion steps in ``tensorboard/fusion_steps``. A resumed run purges, on each axis, what
was logged after its checkpoint (TensorBoard's ``purge_step``), so a killed and resumed run shows every step once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from tdfusion_core import hookimpl

log = logging.getLogger(__name__)
_WRITERS: dict[int, dict[str, Any]] = {}
_CLOCKS: dict[int, float] = {}


def _writer(trainer: Any, axis: str = "epoch") -> Any:
    return _WRITERS.get(id(trainer), {}).get(axis)


@hookimpl
def tdfusion_on_run_start(trainer: Any, config: Any) -> None:
    if trainer.out_dir is None:
        return
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
        return
    root = trainer.out_dir / "tensorboard"
    resumed = trainer.epoch > 0 or trainer.meta_step_count > 0 or trainer.fusion_step_count > 0
    # on resume, drop what a killed run logged after its checkpoint: steps from the first one not yet taken
    axes = {
        "epoch": (root, trainer.epoch + 1),
        "meta": (root / "meta_steps", trainer.meta_step_count + 1),
        "fusion": (root / "fusion_steps", trainer.fusion_step_count + 1),
    }
    _WRITERS[id(trainer)] = {
        axis: SummaryWriter(log_dir=str(folder), purge_step=first if resumed else None)
        for axis, (folder, first) in axes.items()
    }


@hookimpl
def tdfusion_on_epoch_start(trainer: Any, epoch: int) -> None:
    _CLOCKS[id(trainer)] = time.perf_counter()


def _log_step(trainer: Any, phase: str, step: int, metrics: Mapping[str, float]) -> None:
    """One step's metrics as ``<phase>_step/<key>`` scalars in that phase's event stream."""
    writer = _writer(trainer, phase)
    if writer is not None:
        for key, value in metrics.items():
            writer.add_scalar(f"{phase}_step/{key}", value, step)


@hookimpl
def tdfusion_on_meta_step_end(trainer: Any, step: int, metrics: Mapping[str, float]) -> None:
    _log_step(trainer, "meta", step, metrics)


@hookimpl
def tdfusion_on_fusion_step_end(trainer: Any, step: int, metrics: Mapping[str, float]) -> None:
    _log_step(trainer, "fusion", step, metrics)


@hookimpl
def tdfusion_on_epoch_end(trainer: Any, epoch: int, metrics: Mapping[str, float]) -> None:
    writer = _writer(trainer)
    if writer is None:
        return
    for key, value in metrics.items():
        writer.add_scalar(f"epoch/{key}", value, epoch + 1)
    seconds = time.perf_counter() - _CLOCKS.get(id(trainer), time.perf_counter())
    steps = trainer.config.meta_steps + (trainer.config.fusion_steps or len(trainer.train_set))
    if seconds > 0:
        writer.add_scalar("epoch/steps_per_second", steps / seconds, epoch + 1)
    if trainer.config.log_images and hasattr(trainer, "epoch_figure"):
        writer.add_image("images/weights", trainer.epoch_figure(), epoch + 1, dataformats="HWC")
    for each in _WRITERS[id(trainer)].values():
        each.flush()


@hookimpl
def tdfusion_on_run_end(trainer: Any, status: str) -> None:
    _CLOCKS.pop(id(trainer), None)
    for writer in _WRITERS.pop(id(trainer), {}).values():
        writer.close()
