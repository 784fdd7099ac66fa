"""Validation during training: T on F's fused images of a held-out split, fusion metrics of F, and ``best.pt``.

After every ``val_every`` epochs (and after the last one) :class:`Validator` fuses the validation images with F
(eval mode, resized to the task size as in training), computes

* the task's metrics (``Task.evaluate`` of T on the fused images), logged as ``val/<metric>``, and
* cheap no-/full-reference fusion metrics of F on the same images (``val_fusion_metrics``, default EN, SF, SSIM of
  :mod:`tdfusion_core.metrics.fusion`), logged as ``val/fusion/<metric>``,

and writes ``<out>/checkpoints/best.pt`` (same format as ``last.pt``) when the task's primary metric
(:attr:`tdfusion_core.kernel.task.Task.primary_metric`, ``primary_mode``) improves. Without labels only the fusion metrics
are computed and no ``best.pt`` is written.

Which split: ``val_split: auto`` uses ``val`` when the data is a folder with a ``val/`` subfolder (or a registered
dataset given a ``root`` that has one); a split name uses that split (an error if it cannot be built); ``null``
disables validation. ``val_max_samples`` caps the number of samples evaluated.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from tdfusion_core.common.atomic import atomic_save
from tdfusion_core.common.colour import task_input
from tdfusion_core.metrics.fusion import compute_fusion_metrics
from tdfusion_core.training.batches import resize_images

log = logging.getLogger(__name__)

PREFIX = "val/"
FUSION_PREFIX = "val/fusion/"


def _has_split(data: str, options: Mapping[str, Any], split: str) -> bool:
    root = options.get("root", data)
    return Path(str(root), split).is_dir()


def resolve_val_set(config: Any) -> Any | None:
    """The validation dataset of ``config`` (``val_split``; see the module docstring), or ``None``."""
    from tdfusion_core.plugin.registry import resolve_dataset

    choice = config.val_split
    if choice is None or str(choice).lower() in ("none", "null", "false", ""):
        return None
    split = "val" if choice == "auto" else str(choice)
    if choice == "auto" and not _has_split(config.data, config.data_options, split):
        return None
    try:
        dataset = resolve_dataset(config.data, split=split, **config.data_options)
    except (FileNotFoundError, LookupError, ValueError) as exc:
        if choice == "auto":
            log.info("no validation: split %r of %s could not be read (%s)", split, config.data, exc)
            return None
        raise ValueError(f"val_split {split!r}: {exc}") from exc
    if len(dataset) == 0:
        if choice == "auto":
            return None
        raise ValueError(f"val_split {split!r} of {config.data} is empty")
    return dataset


class Validator:
    """Evaluates a :class:`tdfusion_core.training.trainer.MetaTrainer` on ``dataset`` and keeps ``best.pt``.

    Args:
        dataset: validation samples (:class:`tdfusion_core.data.Sample` items).
        fusion_metrics: names of fusion metrics to compute (``[]`` for none).
        max_samples: evaluate only the first ``max_samples`` samples.
        batch_size: samples per forward pass.
    """

    def __init__(
        self,
        dataset: Any,
        fusion_metrics: list[str] | tuple[str, ...] = ("EN", "SF", "SSIM"),
        max_samples: int | None = None,
        batch_size: int = 4,
    ) -> None:
        self.dataset = dataset
        self.fusion_metrics = list(fusion_metrics)
        compute_fusion_metrics(torch.zeros(1, 1, 8, 8), torch.zeros(1, 2, 8, 8), self.fusion_metrics, 1.0)
        self.count = len(dataset) if max_samples is None else min(max_samples, len(dataset))
        self.batch_size = batch_size
        #: (metric name, best value, epoch) of the best validation so far
        self.best: tuple[str, float, int] | None = None

    def __len__(self) -> int:
        return self.count

    def _batches(self, trainer: Any, sums: dict[str, float]) -> Iterator[tuple[torch.Tensor, Any]]:
        size = trainer.task_size
        task = trainer.task
        for start in range(0, self.count, self.batch_size):
            samples = [self.dataset[i] for i in range(start, min(start + self.batch_size, self.count))]
            sources = torch.stack([resize_images(s.sources[None], size)[0] for s in samples])
            fused, _ = trainer.fuse(sources)
            if self.fusion_metrics:
                values = compute_fusion_metrics(fused.float().cpu(), sources.float(), self.fusion_metrics, 1.0)
                for name, v in values.items():
                    sums[name] = sums.get(name, 0.0) + float(v.sum())
            if any(s.target is None for s in samples):
                continue
            chroma = torch.stack([resize_images(s.chroma, size) for s in samples]).to(trainer.device)
            images = task_input(fused, chroma, task.input_kind)
            batcher = trainer.batcher  # the training batches' targets: task size, or full resolution
            targets = batcher.common_resolution([batcher.loss_target(s.target, s.size) for s in samples])
            yield images, task.targets_to(task.collate_targets(targets), trainer.device)

    @torch.no_grad()
    def evaluate(self, trainer: Any) -> dict[str, float]:
        """``val/<task metric>`` and ``val/fusion/<metric>`` of the trainer's current F and T."""
        sums: dict[str, float] = {}
        batches = self._batches(trainer, sums)
        has_targets = self.dataset[0].target is not None
        task_metrics = trainer.task.evaluate(trainer.task.network, batches) if has_targets else {}
        for _ in batches:  # consume what evaluate left (it may stop early)
            pass
        out = {f"{PREFIX}{k}": float(v) for k, v in task_metrics.items() if _is_number(v)}
        out.update({f"{FUSION_PREFIX}{k}": v / max(self.count, 1) for k, v in sums.items()})
        return out

    def primary(self, trainer: Any, metrics: Mapping[str, float]) -> tuple[str, float] | None:
        """The task's primary metric among ``val/...`` metrics."""
        task_metrics = {k[len(PREFIX) :]: v for k, v in metrics.items() if not k.startswith(FUSION_PREFIX)}
        return trainer.task.select_primary(task_metrics)

    def after_epoch(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> dict[str, float]:
        """Validate after ``epoch`` (0-based) when due, adding the results to ``metrics`` (the epoch's entry of the
        history); write ``best.pt`` on improvement. Returns the validation metrics (empty when not due)."""
        cfg = trainer.config
        if (epoch + 1) % cfg.val_every != 0 and epoch + 1 != cfg.epochs:
            return {}
        found = self.evaluate(trainer)
        chosen = self.primary(trainer, found)
        improved = False
        if chosen is not None:
            name, value = chosen
            maximise = getattr(trainer.task, "primary_mode", "max") != "min"
            improved = math.isfinite(value) and (
                self.best is None or (value > self.best[1] if maximise else value < self.best[1])
            )
            if improved:
                self.best = (name, value, epoch + 1)
            if self.best is not None:
                found["val/best_epoch"] = float(self.best[2])
        metrics.update(found)
        if improved and trainer.out_dir is not None:
            save_best(trainer, epoch + 1)
        return found

    def restore(self, trainer: Any, history: list[dict[str, float]]) -> None:
        """Recover the best value from a resumed run's history."""
        for epoch, metrics in enumerate(history, start=1):
            chosen = self.primary(trainer, {k: v for k, v in metrics.items() if k.startswith(PREFIX)})
            if chosen is None:
                continue
            maximise = getattr(trainer.task, "primary_mode", "max") != "min"
            if self.best is None or (chosen[1] > self.best[1] if maximise else chosen[1] < self.best[1]):
                self.best = (chosen[0], chosen[1], epoch)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def best_checkpoint_path(out_dir: str | Path) -> Path:
    """``<out>/checkpoints/best.pt``."""
    return Path(out_dir) / "checkpoints" / "best.pt"


def save_best(trainer: Any, epoch: int) -> Path:
    """Write the trainer's state to ``best.pt`` atomically and durably (:func:`tdfusion_core.common.atomic.atomic_save`)."""
    path = atomic_save(trainer.state_dict(), best_checkpoint_path(trainer.out_dir))
    log.info("best.pt: epoch %d", epoch)
    return path


def make_validator(config: Any, val_set: Any | None) -> Validator | None:
    """A :class:`Validator` for the run (``val_set`` given, else :func:`resolve_val_set`), or ``None``."""
    dataset = val_set if val_set is not None else resolve_val_set(config)
    if dataset is None:
        return None
    return Validator(dataset, config.val_fusion_metrics, config.val_max_samples)
