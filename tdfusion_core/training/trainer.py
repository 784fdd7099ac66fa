"""MetaTrainer: Algorithm 1 of TDFusion with checkpoints, resume, guards and events.

Each epoch runs the **meta phase** (G learns: :class:`~tdfusion_core.kernel.meta_phase.MetaPhaseStep`, one call per meta
step for the T' rule, the meta-gradient of Eqs. 4-7 and G's update) and the **fusion phase** (F and T learn, Eqs. 8-9:
:class:`~tdfusion_core.kernel.fusion_phase.FusionPhaseStep`); batches come from :class:`~tdfusion_core.training.batches.Batcher`.
The trainer keeps the orchestration: schedules, non-finite guards, event hooks, counters and checkpoints. What it is
built from is in :mod:`~tdfusion_core.training.builders`, its state in :mod:`~tdfusion_core.training.train_state`, what its networks
produce in :mod:`~tdfusion_core.training.inspection`. The whole story (ablations, batches, checkpoints, ``torchrun``, K
sources) is in ``docs/architecture.md``, section "The training loop", and ``docs/training.md``.
"""

from __future__ import annotations

import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from tdfusion_core.common.devices import pick_device
from tdfusion_core.common.precision import autocast_dtype, training_precision
from tdfusion_core.common.speed import keep_freed_memory
from tdfusion_core.data.sampling import ShardedBatches, StepSampler, seed_everything
from tdfusion_core.kernel.losses import FusionLoss
from tdfusion_core.kernel.meta import TaskInput
from tdfusion_core.kernel.task import Task
from tdfusion_core.plugin.manager import get_plugin_manager
from tdfusion_core.training import builders, inspection, train_state
from tdfusion_core.training.batches import Batcher
from tdfusion_core.training.config import TrainConfig
from tdfusion_core.training.distributed import (
    DistContext,
    barrier,
    broadcast_module,
    convert_sync_batchnorm,
    init_distributed,
    resolve_device,
)
from tdfusion_core.training.generator_stats import SaturationGuard, generator_stats
from tdfusion_core.training.provenance import check_rebuildable, record_instances
from tdfusion_core.training.run_files import RunLock, save_training_state
from tdfusion_core.training.state_guard import NonFiniteStateError, StepGuard, assert_finite_state
from tdfusion_core.training.validation import Validator, make_validator


class TrainingDivergedError(RuntimeError):
    """Too many consecutive non-finite steps."""


class MetaTrainer:
    """Trains F (fusion), G (loss generator) and T (task) with Algorithm 1.

    Args:
        config: the run's settings.
        task: a Task instance; default: built from ``config.task`` / ``config.task_options`` through the registry.
        train_set: a dataset of :class:`Sample`; default: ``config.data`` (a registered name or a folder path).
        fusion_net, loss_generator: modules; default: built from the registry by ``config.fusion_net`` etc.
        out_dir: run directory (config, checkpoints, logs, images); ``None`` keeps everything in memory.
        resume: continue from ``out_dir/checkpoints/last.pt`` (written with any number of processes).
        val_set: validation samples evaluated after each epoch (:mod:`tdfusion_core.training.validation`); default: the
            ``val_split`` of ``config.data`` when it has one.

    A Task or dataset *instance* is recorded in :attr:`config` (so in ``config.yaml`` and ``model.pt``) by its class
    path and root (:mod:`tdfusion_core.training.provenance`).

    Under ``torchrun`` the process group is joined here (docs/training.md, "Multi-process training"); :attr:`dist`
    tells the rank and the number of processes, :attr:`is_main_process` whether this process writes files and logs.
    Every process must build its trainer with the same configuration, modules and dataset (modules are broadcast
    from rank 0).
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        task: Task | None = None,
        train_set: Any = None,
        fusion_net: nn.Module | None = None,
        loss_generator: nn.Module | None = None,
        out_dir: str | Path | None = None,
        resume: bool = False,
        val_set: Any = None,
    ) -> None:
        check_rebuildable(config, need_task=task is None and not config.tasks, need_data=train_set is None)
        self.config = config
        pick_device(config.device)  # a device this machine lacks fails in one line, before any process group
        #: this process's place in a multi-process run (world_size 1 without torchrun)
        self.dist: DistContext = init_distributed(config.device, config.dist_backend)
        self.device = resolve_device(config.device, self.dist)
        if self.device.type == "cpu":  # large CPU temporaries reuse mapped pages instead of faulting fresh ones in
            keep_freed_memory()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        seed_everything(config.seed, config.deterministic)
        self.train_set = train_set if train_set is not None else builders.build_dataset(config)
        if len(self.train_set) < 1:
            raise ValueError("the training set is empty")
        self.num_sources = int(self.train_set[0].sources.shape[0])
        self.task = task if task is not None else builders.build_task(config, self.train_set)
        #: the config as recorded in config.yaml / model.pt: instances given here are named by class path / root
        self.config = config = record_instances(config, task, train_set)
        self.task.network.to(self.device)
        if config.sync_batchnorm and self.dist.enabled:
            self.task.network = convert_sync_batchnorm(self.task.network, self.device)
        #: whether F and G were built from the registry by name (only then can model.pt name their architectures)
        self.nets_from_registry = fusion_net is None and loss_generator is None
        self.fusion_net, self.loss_generator = builders.build_networks(
            config, self.num_sources, self.device, fusion_net, loss_generator
        )
        self.fusion_loss = FusionLoss(
            intensity=config.intensity, alpha=config.alpha, gradient_form=config.gradient_form
        )
        self.task_size = builders.task_size(config, self.train_set, self.task)
        optimizers = builders.build_optimizers(config, self.fusion_net, self.task, self.loss_generator)
        self.opt_fusion, self.opt_task, self.opt_generator = optimizers.fusion, optimizers.task, optimizers.generator
        self.schedulers = optimizers.schedulers
        autocast = autocast_dtype(training_precision(config.amp))  # amp: bf16 autocast
        nets = (self.fusion_net, self.loss_generator, self.task, self.fusion_loss, optimizers, self.dist)
        #: the whole meta step (T' rule, G's meta-gradient, G's update: tdfusion_core.kernel.meta_phase)
        self.meta_phase_step = builders.build_meta_phase(config, *nets, autocast)
        #: the global batches and crop draws of every step, and this process's share of each batch
        self.sampler = StepSampler(
            config.batch_size,
            config.seed,
            ShardedBatches(config.batch_size, config.switch, self.dist.rank, self.dist.world_size),
        )
        #: reads (in ``num_workers`` processes) and builds every training batch: crops, task-size images and
        #: targets, the Switch, this process's share
        self.batcher = Batcher(
            self.task, self.task_size, config.crop_size, config.switch, self.device, self.sampler, config.num_workers
        )
        self.epoch = 0  # epochs completed
        self.meta_step_count = 0
        self.fusion_step_count = 0
        self.bad_steps = 0
        self.history: list[dict[str, float]] = []
        self.pm = get_plugin_manager()
        self.saturation_guard = SaturationGuard()
        #: validation after each epoch (tdfusion_core.training.validation); ``None`` without a validation split
        self.validator: Validator | None = make_validator(config, val_set) if self.dist.is_main else None
        if resume:
            train_state.resume(self)
            if self.validator is not None:
                self.validator.restore(self, self.history)
        # the same starting point everywhere, then DDP for the fusion phase (F's and T's gradients averaged)
        for module in (self.fusion_net, self.loss_generator, self.task.network):
            broadcast_module(module, self.dist)
        #: the fusion phase's maths (Eqs. 8-9 with the ablations) over F's and T's (DDP-wrapped) forwards
        self.fusion_step = builders.build_fusion_phase(config, *nets, self.device, autocast)

    @property
    def is_main_process(self) -> bool:
        """Whether this is rank 0 (always true in a single-process run): it writes files, logs and fires hooks."""
        return self.dist.is_main

    def _emit(self, hook: str, **kwargs: Any) -> None:
        """Fire event hook ``hook`` (rank 0 only: loggers and other plugins see one run, not one per process)."""
        if self.dist.is_main:
            getattr(self.pm.hook, hook)(**kwargs)

    # ------------------------------------------------------------------ guards
    def _bad_step(self, phase: str, what: str) -> None:
        self.bad_steps += 1
        warnings.warn(
            f"{phase}: non-finite {what}; step skipped ({self.bad_steps}/{self.config.max_bad_steps} in a row)",
            RuntimeWarning,
            stacklevel=3,
        )
        if self.bad_steps >= self.config.max_bad_steps:
            where = f" The last good checkpoint is {self.checkpoint_path}." if self.out_dir else ""
            raise TrainingDivergedError(
                f"training stopped after {self.bad_steps} consecutive non-finite steps (last in the {phase}).{where} "
                "Lower the learning rates or disable --amp."
            )

    def _guarded(self, step: Callable[[Any], dict[str, float] | None], item: Any, desc: str) -> dict[str, float] | None:
        """``step(item)`` under a :class:`~tdfusion_core.training.state_guard.StepGuard` over F, G, T and their optimizers:
        non-finite buffers are rolled back, non-finite parameters or optimizer states stop the run."""
        guard = StepGuard(
            {"F": self.fusion_net, "G": self.loss_generator, "T": self.task.network},
            {"F": self.opt_fusion, "G": self.opt_generator, "T": self.opt_task},
        )
        try:
            with guard:
                metrics = step(item)
        except NonFiniteStateError as exc:
            where = f" The last good checkpoint is {self.checkpoint_path}." if self.out_dir else ""
            raise TrainingDivergedError(f"training stopped in the {desc} phase: {exc}.{where}") from exc
        if guard.restored:
            warnings.warn(
                f"{desc} phase: non-finite values in {', '.join(guard.restored[:8])}; restored to their values "
                "before the step",
                RuntimeWarning,
                stacklevel=2,
            )
        return metrics

    # ------------------------------------------------------------------ phases
    def meta_phase(self, epoch: int) -> dict[str, float]:
        """Learning of G: ``meta_steps`` meta steps on disjoint meta-train / meta-test batches."""
        cfg = self.config
        if cfg.meta_steps == 0 or cfg.fixed_weights or cfg.discriminative:
            return {}
        self.loss_generator.train()
        # 1. the batches of every step (sampler plan, workers' reads), 2. per batch the whole meta step
        batches = self.batcher.meta_phase(self.train_set, epoch, cfg.meta_steps)
        return self._run_phase(batches, lambda b: self.meta_update(*b), f"epoch {epoch + 1} meta", "meta")

    def meta_update(self, crop: torch.Tensor, mtr_task: TaskInput, mts_task: TaskInput) -> dict[str, float] | None:
        """One whole meta step on prepared batches (:class:`~tdfusion_core.kernel.meta_phase.MetaPhaseStep`: T' rule,
        meta-gradient, G's update) with its counters, statistics and event; ``None`` if skipped (non-finite)."""
        outcome = self.meta_phase_step.update(crop, mtr_task, mts_task)
        self.meta_step_count += 1
        metrics = outcome.metrics
        if outcome.skipped is not None:
            skipped = {**metrics, "skipped": 1.0}
            self._emit("tdfusion_on_meta_step_end", trainer=self, step=self.meta_step_count, metrics=skipped)
            self._bad_step(*outcome.skipped)
            return None
        self.bad_steps = 0
        # G's entropy and mean weight per source in both source orders, and a warning when it saturates
        every, per_epoch = self.config.generator_stats_every, self.config.meta_steps
        if every and (self.meta_step_count % every == 0 or (per_epoch and self.meta_step_count % per_epoch == 0)):
            metrics.update(generator_stats(self.loss_generator, crop))
            self.saturation_guard.check(metrics, self.meta_step_count)
        self._emit("tdfusion_on_meta_step_end", trainer=self, step=self.meta_step_count, metrics=metrics)
        if not self.config.separate_fusion_phase:
            # ablation IV: F and T learn inside the meta loop, one step of their own optimizers on the meta-train
            # batch after each outer update (F on Lf with G's current weights, T on Lt of F's detached output)
            self.loss_generator.eval()
            try:
                learned = self.fusion_update(crop, mtr_task)
            finally:
                self.loss_generator.train()
            if learned is not None:
                metrics.update({f"learn/{k}": v for k, v in learned.items()})
        return metrics

    def fusion_phase(self, epoch: int) -> dict[str, float]:
        """Learning of F and T over the training set (Eqs. 8-9)."""
        cfg = self.config
        if not cfg.separate_fusion_phase:
            return {}
        self.fusion_net.train()
        self.task.network.train()
        # G frozen in eval mode, as the released Loss_model.eval() (it is the network trained in ablation V)
        self.loss_generator.train(cfg.discriminative)
        # 1. the batches (a permutation per epoch), 2. per batch F's then T's step
        batches = self.batcher.fusion_phase(self.train_set, epoch, cfg.fusion_steps)
        return self._run_phase(batches, lambda b: self.fusion_update(*b), f"epoch {epoch + 1} fusion", "fusion")

    def fusion_update(self, crop: torch.Tensor, batch: TaskInput) -> dict[str, float] | None:
        """One fusion-phase step (:class:`~tdfusion_core.kernel.fusion_phase.FusionPhaseStep`: F on Lf with G frozen, then
        T on Lt) with its counter and event; ``None`` if skipped (non-finite).

        With several processes F and T go through DistributedDataParallel (gradients averaged over the shards),
        the finiteness checks agree across processes and the returned losses are averaged over them.
        """
        self.fusion_step_count += 1
        outcome = self.fusion_step.update(crop, batch)
        if outcome.metrics is None:
            assert outcome.skipped is not None
            self._bad_step(*outcome.skipped)
            return None
        self.bad_steps = 0
        self._emit("tdfusion_on_fusion_step_end", trainer=self, step=self.fusion_step_count, metrics=outcome.metrics)
        return outcome.metrics

    def _run_phase(
        self, items: Iterable[Any], step: Callable[[Any], dict[str, float] | None], desc: str, prefix: str
    ) -> dict[str, float]:
        """Run ``step`` on each item under a progress bar; per metric, its mean over the steps that reported it."""
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        bar = tqdm(items, desc=desc, disable=not (self.config.progress and self.dist.is_main), leave=False)
        for item in bar:
            metrics = self._guarded(step, item, desc)
            if metrics is None:
                continue
            for k, v in metrics.items():
                sums[k] += v
                counts[k] += 1
            bar.set_postfix(task=f"{metrics['task_loss']:.4f}", fusion=f"{metrics['fusion_loss']:.4f}")
        return {f"{prefix}/{k}": v / counts[k] for k, v in sums.items()}

    # ------------------------------------------------------------------ the loop
    def fit(self) -> list[dict[str, float]]:
        """Run the remaining epochs; returns the per-epoch metrics history."""
        cfg = self.config
        main = self.dist.is_main
        lock = RunLock(self.out_dir) if self.out_dir is not None and main else None
        if lock is not None:
            lock.acquire()  # a second run into the same out_dir stops here, before writing anything
        if self.out_dir is not None and main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            cfg.to_yaml(self.out_dir / "config.yaml")
        self._emit("tdfusion_on_run_start", trainer=self, config=cfg)
        status = "failed"
        try:
            for epoch in range(self.epoch, cfg.epochs):
                self._emit("tdfusion_on_epoch_start", trainer=self, epoch=epoch)
                start = time.perf_counter()
                metrics = {**self.meta_phase(epoch), **self.fusion_phase(epoch)}
                seconds = time.perf_counter() - start
                with warnings.catch_warnings():  # an optimizer that an ablation never steps still decays
                    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
                    for sched in self.schedulers:
                        sched.step()
                metrics["epoch_seconds"] = seconds
                metrics["lr/fusion"] = self.opt_fusion.param_groups[0]["lr"]
                metrics["lr/task"] = self.opt_task.param_groups[0]["lr"]
                metrics["lr/generator"] = self.opt_generator.param_groups[0]["lr"]
                if main:  # for the logs only
                    for k, w in enumerate(self.source_weight_means()):
                        metrics[f"weight/source{k}"] = w
                self.epoch = epoch + 1
                self.history.append(metrics)
                if self.validator is not None:  # after the counters: best.pt resumes after this epoch
                    self.validator.after_epoch(self, epoch, metrics)
                self._emit("tdfusion_on_epoch_end", trainer=self, epoch=epoch, metrics=metrics)
                if self.out_dir is not None:
                    if cfg.log_images and main:
                        inspection.save_epoch_figure(self.out_dir, epoch, self.epoch_figure())
                    if self.epoch % cfg.checkpoint_every == 0 or self.epoch == cfg.epochs:
                        self.save_checkpoint()
            status = "completed"
            if self.out_dir is not None and self.nets_from_registry and main:
                self.export_model(self.out_dir / "model.pt")
            barrier(self.dist)
        except KeyboardInterrupt:
            status = "stopped"
            raise
        finally:
            try:
                self._emit("tdfusion_on_run_end", trainer=self, status=status)
            finally:
                if lock is not None:
                    lock.release()
        return self.history

    # ------------------------------------------------------------------ state (tdfusion_core.training.train_state)
    @property
    def checkpoint_path(self) -> Path:
        """``<out>/checkpoints/last.pt``."""
        if self.out_dir is None:
            raise ValueError("this trainer has no run directory (out_dir=None)")
        return self.out_dir / "checkpoints" / "last.pt"

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run bit for bit (:func:`~tdfusion_core.training.train_state.training_state`)."""
        return train_state.training_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict`."""
        train_state.restore_training_state(self, state)

    def save_checkpoint(self) -> Path:
        """Write the training state atomically to :attr:`checkpoint_path` and announce it.

        In a multi-process run rank 0 writes (every process holds the same state) and the others wait for it.
        """
        path = self.checkpoint_path
        if self.dist.is_main:
            state = self.state_dict()
            try:
                assert_finite_state(state, "the training state")
            except NonFiniteStateError as exc:
                raise TrainingDivergedError(f"{exc}; not saved, the last good checkpoint is {path}") from exc
            save_training_state(state, path)
            self._emit("tdfusion_on_checkpoint_saved", trainer=self, path=str(path), epoch=self.epoch)
        barrier(self.dist)
        return path

    # ------------------------------------------------------------------ outputs (tdfusion_core.training.inspection)
    def export_model(self, path: str | Path) -> Path:
        """Save F and G for inference (``tdfusion fuse --checkpoint``) in the documented model format."""
        nets = (self.fusion_net, self.loss_generator)
        return inspection.export_model(path, self.config, *nets, self.num_sources, self.epoch)

    def fuse(self, sources: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused image and the fusion loss's weights (G's, or ``1/K``) for ``(B, K, H, W)`` sources (eval mode, no
        grad)."""
        nets = (self.fusion_net, self.loss_generator, self.fusion_step.weights)
        return inspection.fuse_and_weigh(*nets, sources.to(self.device))

    def source_weight_means(self, max_samples: int = 8) -> list[float]:
        """Mean weight G gives each source over the first ``max_samples`` training samples (task size).

        In a multi-process run :meth:`fit` computes it on rank 0 only (for the logs)."""
        if self.config.fixed_weights:
            return [1.0 / self.num_sources] * self.num_sources
        gen = self.loss_generator
        return inspection.mean_source_weights(gen, self.train_set, self.task_size, self.device, max_samples)

    def epoch_figure(self, count: int = 4) -> np.ndarray:
        """RGB grid of sources, fused image and weight maps of the first ``count`` training samples (rows), at the
        task size (:func:`~tdfusion_core.training.inspection.weight_figure`)."""
        return inspection.weight_figure(self.fuse, self.train_set, self.task_size, count)

    def evaluate(self, dataset: Any, batch_size: int = 4) -> dict[str, float]:
        """Task metrics of T on F's fused images of ``dataset`` (resized to the task size)."""
        return inspection.evaluate_on_fused(self.task, self.batcher, self.fuse, dataset, self.device, batch_size)
