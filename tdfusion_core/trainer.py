"""MetaTrainer: Algorithm 1 of TDFusion with checkpoints, resume, guards and events.

Each epoch runs the **meta phase** (G learns: :class:`~tdfusion_core.meta.MetaStep` on disjoint meta-train and
meta-test batches, Eqs. 4-7) and the **fusion phase** (F and T learn, Eqs. 8-9:
:class:`~tdfusion_core.fusion_phase.FusionPhaseStep`); batches come from :class:`~tdfusion_core.batches.Batcher`.
The trainer keeps the orchestration: schedules, non-finite guards, event hooks, checkpoints and resume, several
processes and several tasks. The whole story (ablations, batches, checkpoints, ``torchrun``, K sources) is in ``docs/architecture.md``,
section "The training loop".
"""

from __future__ import annotations

import inspect
import logging
import random
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from tdfusion_core import __version__, registry
from tdfusion_core.batches import Batcher, resize_images
from tdfusion_core.colour import task_input
from tdfusion_core.config import TrainConfig
from tdfusion_core.config_io import check_task_options
from tdfusion_core.data.transforms import meta_split
from tdfusion_core.devices import pick_device
from tdfusion_core.distributed import (
    DistContext,
    DistributedMetaStep,
    MetaBatchSampler,
    MultiInputForward,
    agree_finite,
    barrier,
    broadcast_module,
    convert_sync_batchnorm,
    full_batches,
    init_distributed,
    resolve_device,
    wrap_ddp,
)
from tdfusion_core.fusion_phase import FusionPhaseStep
from tdfusion_core.losses import FusionLoss, discriminative_fusion
from tdfusion_core.meta import (
    MetaStep,
    Params,
    TaskInput,
    apply_maxnorm_update,
    apply_optimizer_update,
    task_step_rule,
)
from tdfusion_core.nets.refusion_fast import use_fast_pass
from tdfusion_core.plugins import get_plugin_manager
from tdfusion_core.provenance import check_rebuildable, record_instances
from tdfusion_core.registry import resolve_dataset
from tdfusion_core.run_files import RunLock, check_resume_config, load_training_state, save_training_state
from tdfusion_core.seeding import epoch_generator, seed_everything
from tdfusion_core.state_guard import NonFiniteStateError, StepGuard, assert_finite_state
from tdfusion_core.task import Task, TaskLoss
from tdfusion_core.validation import Validator, make_validator

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "tdfusion-train-state"


class TrainingDivergedError(RuntimeError):
    """Too many consecutive non-finite steps."""


class WeightedSum(nn.Module):
    """Discriminative fusion (ablation V): ``If = Σ_k w_k I_k`` with ``w = G(I)``."""

    def __init__(self, loss_generator: nn.Module) -> None:
        super().__init__()
        self.loss_generator = loss_generator

    def forward(self, sources: torch.Tensor) -> torch.Tensor:
        return discriminative_fusion(sources, self.loss_generator(sources))


def _takes_option(factory: Any, name: str) -> bool:
    """Whether ``factory`` (a task class) names the keyword ``name`` in its signature (``**config`` does not count)."""
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


class MetaTrainer:
    """Trains F (fusion), G (loss generator) and T (task) with Algorithm 1.

    Args:
        config: the run's settings.
        task: a Task instance; default: built from ``config.task`` / ``config.task_options`` through the registry.
        train_set: a dataset of :class:`Sample`; default: ``config.data`` (a registered name or a folder path).
        fusion_net, loss_generator: modules; default: built from the registry by ``config.fusion_net`` etc.
        out_dir: run directory (config, checkpoints, logs, images); ``None`` keeps everything in memory.
        resume: continue from ``out_dir/checkpoints/last.pt`` (written with any number of processes).
        val_set: validation samples evaluated after each epoch (:mod:`tdfusion_core.validation`); default: the
            ``val_split`` of ``config.data`` when it has one.

    A Task or dataset *instance* is recorded in :attr:`config` (so in ``config.yaml`` and ``model.pt``) by its class
    path and root (:mod:`tdfusion_core.provenance`).

    Under ``torchrun`` the process group is joined here (see the module docstring); :attr:`dist` tells the rank
    and the number of processes, :attr:`is_main_process` whether this process writes files and logs. Every process
    must build its trainer with the same configuration, modules and dataset (modules are broadcast from rank 0).
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
        #: this process's place in a multi-process run (world_size 1 without torchrun)
        pick_device(config.device)  # a device this machine lacks fails in one line, before any process group
        self.dist: DistContext = init_distributed(config.device, config.dist_backend)
        self.device = resolve_device(config.device, self.dist)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        seed_everything(config.seed, config.deterministic)
        self.train_set = train_set if train_set is not None else self._build_dataset()
        if len(self.train_set) < 1:
            raise ValueError("the training set is empty")
        num_sources = int(self.train_set[0].sources.shape[0])
        self.num_sources = num_sources
        self.task = task if task is not None else self._build_task()
        #: the config as recorded in config.yaml / model.pt: instances given here are named by class path / root
        self.config = config = record_instances(config, task, train_set)
        self.task.network.to(self.device)
        if config.sync_batchnorm and self.dist.enabled:
            self.task.network = convert_sync_batchnorm(self.task.network, self.device)
        #: whether F and G were built from the registry by name (only then can model.pt name their architectures)
        self.nets_from_registry = fusion_net is None and loss_generator is None
        self.loss_generator = (
            loss_generator
            if loss_generator is not None
            else registry.get_loss_generator(config.loss_generator, num_sources, **config.loss_generator_options)
        ).to(self.device)
        if config.discriminative:
            self.fusion_net: nn.Module = WeightedSum(self.loss_generator)
        else:
            self.fusion_net = (
                fusion_net
                if fusion_net is not None
                else registry.get_fusion_net(config.fusion_net, num_sources, **config.fusion_options)
            ).to(self.device)
            if config.fusion_checkpoint:
                self._load_fusion_weights(Path(config.fusion_checkpoint))
            use_fast_pass(self.fusion_net, config.fast_fusion_pass)
        self.fusion_loss = FusionLoss(
            intensity=config.intensity, alpha=config.alpha, gradient_form=config.gradient_form
        )
        self.task_size = self._resolve_task_size()

        self.opt_fusion = torch.optim.Adam(self.fusion_net.parameters(), lr=config.lr_fusion)
        self.opt_task = self.task.make_optimizer(self.task.network.parameters())
        for group in self.opt_task.param_groups:
            group["lr"] = config.lr_task
        self.opt_generator = self._make_generator_optimizer()
        self.schedulers = [
            torch.optim.lr_scheduler.StepLR(opt, step_size=config.lr_step_size, gamma=config.lr_gamma)
            for opt in (self.opt_fusion, self.opt_task, self.opt_generator)
        ]
        autocast = torch.bfloat16 if config.amp else None
        step_args = (self.fusion_net, self.loss_generator, self.task, self.fusion_loss, config.meta_mode)
        self.meta_step_fn: MetaStep = (
            DistributedMetaStep(*step_args, autocast_dtype=autocast, ctx=self.dist, sync=config.meta_sync)
            if self.dist.enabled
            else MetaStep(*step_args, autocast_dtype=autocast)
        )
        #: global meta batches of each step and this process's share of every global batch
        self.sampler = MetaBatchSampler(
            len(self.train_set), config.batch_size, config.seed, config.switch, self.dist.rank, self.dist.world_size
        )
        #: builds every training batch: crops, task-size images and targets, the Switch, this process's share
        self.batcher = Batcher(
            self.task, self.task_size, config.crop_size, config.switch, self.device, self.sampler.shards
        )
        self.epoch = 0  # epochs completed
        self.meta_step_count = 0
        self.fusion_step_count = 0
        self.bad_steps = 0
        self.history: list[dict[str, float]] = []
        self.pm = get_plugin_manager()
        #: validation after each epoch (tdfusion_core.validation); ``None`` without a validation split
        self.validator: Validator | None = make_validator(config, val_set) if self.dist.is_main else None
        if resume:
            self._resume()
            if self.validator is not None:
                self.validator.restore(self, self.history)
        # the same starting point everywhere, then DDP for the fusion phase (F's and T's gradients averaged)
        for module in (self.fusion_net, self.loss_generator, self.task.network):
            broadcast_module(module, self.dist)
        fusion_forward: nn.Module = MultiInputForward(self.fusion_net)
        task_loss_module: nn.Module | None = None
        if self.dist.enabled:
            fusion_forward = wrap_ddp(fusion_forward, self.device, config.find_unused_parameters)
            task_loss_module = wrap_ddp(
                TaskLoss(self.task, self.task.network), self.device, config.find_unused_parameters
            )
        #: the fusion phase's maths (Eqs. 8-9 with the ablations) over F's and T's (DDP-wrapped) forwards
        self.fusion_step = FusionPhaseStep(
            self.fusion_net,
            self.loss_generator,
            self.task,
            self.fusion_loss,
            self.opt_fusion,
            self.opt_task,
            fusion_forward,
            task_loss_module,
            fixed_weights=config.fixed_weights,
            task_loss_on_fusion=config.task_loss_on_fusion,
            discriminative=config.discriminative,
            autocast_dtype=torch.bfloat16 if config.amp else None,
            agree=lambda values: agree_finite(values, self.dist),
        )

    @property
    def is_main_process(self) -> bool:
        """Whether this is rank 0 (always true in a single-process run): it writes files, logs and fires hooks."""
        return self.dist.is_main

    def _emit(self, hook: str, **kwargs: Any) -> None:
        """Fire event hook ``hook`` (rank 0 only: loggers and other plugins see one run, not one per process)."""
        if self.dist.is_main:
            getattr(self.pm.hook, hook)(**kwargs)

    # ------------------------------------------------------------------ construction helpers
    def _build_task(self) -> Task:
        if self.config.tasks:
            from tdfusion_core.multitask import MultiTask

            return MultiTask.from_specs(self.config.tasks, self.train_set)
        options = dict(self.config.task_options)
        check_task_options(self.config.task, registry.lookup("task", self.config.task), options)
        num_classes = getattr(self.train_set, "num_classes", None)
        if num_classes is not None:
            options.setdefault("num_classes", num_classes)
        input_kind = getattr(self.train_set, "input_kind", None)  # a dataset preset's (the released code's)
        if input_kind is not None and _takes_option(registry.lookup("task", self.config.task), "input_kind"):
            options.setdefault("input_kind", input_kind)
        task = registry.get_task(self.config.task, **options)
        task_classes = getattr(task, "num_classes", None)
        if num_classes is None and hasattr(self.train_set, "num_classes") and task_classes:
            # labels are then checked against the task's count when loaded, naming the file of a value out of range
            self.train_set.num_classes = int(task_classes)
        return task

    def _build_dataset(self) -> Any:
        return resolve_dataset(self.config.data, split="train", **self.config.data_options)

    def _resolve_task_size(self) -> tuple[int, int]:
        for size in (
            self.config.task_size,
            getattr(self.train_set, "task_size", None),
            self.task.default_input_size,
        ):
            if size is not None:
                return (int(size[0]), int(size[1]))
        return self.train_set[0].size

    def _make_generator_optimizer(self) -> torch.optim.Optimizer:
        rule = self.config.generator_update
        params = self.loss_generator.parameters()
        lr = self.config.lr_generator
        if rule in ("maxnorm", "adam"):  # maxnorm only uses the optimizer's scheduled learning rate
            return torch.optim.Adam(params, lr=lr, eps=1e-10)
        if rule == "adamw":
            return torch.optim.AdamW(params, lr=lr, eps=1e-10)
        return torch.optim.SGD(params, lr=lr)

    def _load_fusion_weights(self, path: Path) -> None:
        from tdfusion_core.checkpoints import check_state_fits, load_model_checkpoint

        state = load_model_checkpoint(path).fusion_net.state_dict()
        check_state_fits(self.fusion_net, state, f"{self.config.fusion_net!r} {self.config.fusion_options}", str(path))
        self.fusion_net.load_state_dict(state)

    # ------------------------------------------------------------------ data (tdfusion_core.batches)
    def _epoch_generator(self, epoch: int, phase: int) -> torch.Generator:
        return epoch_generator(self.config.seed, epoch, phase)

    def _prepare_step(self, indices: Sequence[int], gen: torch.Generator) -> tuple[torch.Tensor, TaskInput]:
        """This process's share of the global batch of dataset ``indices`` (:meth:`Batcher.share`)."""
        return self.batcher.share(self.train_set, indices, gen)

    def meta_split(self, epoch: int) -> tuple[list[int], list[int]]:
        """Disjoint meta-train and meta-test index sets of ``epoch`` (a pure function of the seed and the epoch,
        the same in every process)."""
        return meta_split(len(self.train_set), epoch, self.config.seed)

    @property
    def _show_progress(self) -> bool:
        return self.config.progress and self.dist.is_main

    # ------------------------------------------------------------------ guards and events
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

    def _inner_lr(self) -> float:
        return self.config.inner_lr if self.config.inner_lr is not None else self.opt_fusion.param_groups[0]["lr"]

    # ------------------------------------------------------------------ phases
    def meta_phase(self, epoch: int) -> dict[str, float]:
        """Learning of G: ``meta_steps`` meta steps on disjoint meta-train / meta-test batches."""
        cfg = self.config
        if cfg.meta_steps == 0 or cfg.fixed_weights or cfg.discriminative:
            return {}
        split = self.meta_split(epoch)
        gen = self._epoch_generator(epoch, 1)
        self.loss_generator.train()

        def step(index: int) -> dict[str, float] | None:
            i_tr, i_ts = self.sampler.step(epoch, index, split)
            crop, mtr_task = self._prepare_step(i_tr, gen)
            _, mts_task = self._prepare_step(i_ts, gen)
            return self.meta_update(crop, mtr_task, mts_task)

        return self._run_phase(range(cfg.meta_steps), step, f"epoch {epoch + 1} meta", "meta")

    def task_update_rule(self) -> Callable[[Params, Params], Params]:
        """The meta step's T' rule: ``config.task_step`` over T's optimizer (:func:`tdfusion_core.meta.task_step_rule`)."""
        return task_step_rule(self.config.task_step, self.opt_task, self.task.network)

    def meta_update(self, crop: torch.Tensor, mtr_task: TaskInput, mts_task: TaskInput) -> dict[str, float] | None:
        """One meta step on prepared batches and the update of G; ``None`` if the step was skipped (non-finite)."""
        cfg = self.config
        result = self.meta_step_fn.compute(crop, mtr_task, mts_task, self._inner_lr(), self.task_update_rule())
        self.meta_step_count += 1
        metrics = {
            "task_loss": float(result.task_loss),
            "fusion_loss": float(result.fusion_loss),
            "inner_task_loss": float(result.inner_task_loss),
        }
        if not result.finite:
            self._emit(
                "tdfusion_on_meta_step_end",
                trainer=self,
                step=self.meta_step_count,
                metrics={**metrics, "skipped": 1.0},
            )
            self._bad_step("meta phase", "task loss, fusion loss or G gradient")
            return None
        self.bad_steps = 0
        if cfg.generator_update == "maxnorm" and cfg.generator_max_change is not None:
            from tdfusion_core.generator_stats import bounded_maxnorm_update

            lr_g = self.opt_generator.param_groups[0]["lr"]
            metrics["g/step_scale"] = bounded_maxnorm_update(
                self.loss_generator, result.grad_g, lr_g, crop, cfg.generator_max_change
            )
        elif cfg.generator_update == "maxnorm":
            apply_maxnorm_update(self.loss_generator, result.grad_g, self.opt_generator.param_groups[0]["lr"])
        else:
            apply_optimizer_update(self.loss_generator, result.grad_g, self.opt_generator)
        # G's entropy and mean weight per source in both source orders, and a warning when it saturates
        from tdfusion_core.generator_stats import SaturationGuard, generator_stats

        metrics.update(generator_stats(self.loss_generator, crop))
        self.__dict__.setdefault("saturation_guard", SaturationGuard()).check(metrics, self.meta_step_count)
        self._emit("tdfusion_on_meta_step_end", trainer=self, step=self.meta_step_count, metrics=metrics)
        if not cfg.separate_fusion_phase:
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

    def _weights(self, sources: torch.Tensor) -> torch.Tensor:
        return self.fusion_step.weights(sources)

    def fusion_phase(self, epoch: int) -> dict[str, float]:
        """Learning of F and T over the training set (Eqs. 8-9)."""
        cfg = self.config
        if not cfg.separate_fusion_phase:
            return {}
        n = len(self.train_set)
        gen = self._epoch_generator(epoch, 2)
        batches = full_batches(torch.randperm(n, generator=gen).tolist(), cfg.batch_size)
        if cfg.fusion_steps is not None:
            batches = [batches[i % len(batches)] for i in range(cfg.fusion_steps)]
        self.fusion_net.train()
        self.task.network.train()
        # G frozen in eval mode, as the released Loss_model.eval() (it is the network trained in ablation V)
        self.loss_generator.train(cfg.discriminative)
        return self._run_phase(
            batches,
            lambda idx: self.fusion_update(*self._prepare_step(idx, gen)),
            f"epoch {epoch + 1} fusion",
            "fusion",
        )

    def _run_phase(
        self, items: Iterable[Any], step: Callable[[Any], dict[str, float] | None], desc: str, prefix: str
    ) -> dict[str, float]:
        """Run ``step`` on each item under a progress bar; mean of the metrics of the steps not skipped."""
        sums: dict[str, float] = defaultdict(float)
        done = 0
        bar = tqdm(items, desc=desc, disable=not self._show_progress, leave=False)
        for item in bar:
            metrics = self._guarded(step, item, desc)
            if metrics is None:
                continue
            for k, v in metrics.items():
                sums[k] += v
            done += 1
            bar.set_postfix(task=f"{metrics['task_loss']:.4f}", fusion=f"{metrics['fusion_loss']:.4f}")
        return {f"{prefix}/{k}": v / max(done, 1) for k, v in sums.items()}

    def _guarded(self, step: Callable[[Any], dict[str, float] | None], item: Any, desc: str) -> dict[str, float] | None:
        """``step(item)`` under a :class:`~tdfusion_core.state_guard.StepGuard` over F, G, T and their optimizers:
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

    def fusion_update(self, crop: torch.Tensor, batch: TaskInput) -> dict[str, float] | None:
        """One fusion-phase step (:class:`~tdfusion_core.fusion_phase.FusionPhaseStep`: F on Lf with G frozen, then
        T on Lt); ``None`` if skipped (non-finite).

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

    # ------------------------------------------------------------------ statistics
    @torch.no_grad()
    def source_weight_means(self, max_samples: int = 8) -> list[float]:
        """Mean weight G gives each source over the first ``max_samples`` training samples (task size).

        In a multi-process run :meth:`fit` computes it on rank 0 only (for the logs)."""
        if self.config.fixed_weights:
            return [1.0 / self.num_sources] * self.num_sources
        was = self.loss_generator.training
        self.loss_generator.eval()
        totals = torch.zeros(self.num_sources)
        count = min(max_samples, len(self.train_set))
        for i in range(count):
            sources = resize_images(self.train_set[i].sources[None], self.task_size).to(self.device)
            totals += self.loss_generator(sources).mean(dim=(0, 2, 3)).float().cpu()
        self.loss_generator.train(was)
        return (totals / max(count, 1)).tolist()

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
                        self.save_epoch_figure(epoch)
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

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        """``<out>/checkpoints/last.pt``."""
        if self.out_dir is None:
            raise ValueError("this trainer has no run directory (out_dir=None)")
        return self.out_dir / "checkpoints" / "last.pt"

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run bit for bit."""
        np_state: tuple[Any, ...] = tuple(np.random.get_state(legacy=True))
        return {
            "format": CHECKPOINT_FORMAT,
            "version": __version__,
            "config": self.config.to_dict(),
            "world_size": self.dist.world_size,  # informative: the state does not depend on it
            "epoch": self.epoch,
            "meta_step": self.meta_step_count,
            "fusion_step": self.fusion_step_count,
            "fusion_net": self.fusion_net.state_dict(),
            "loss_generator": self.loss_generator.state_dict(),
            "task_net": self.task.network.state_dict(),
            "opt_fusion": self.opt_fusion.state_dict(),
            "opt_task": self.opt_task.state_dict(),
            "opt_generator": self.opt_generator.state_dict(),
            "schedulers": [s.state_dict() for s in self.schedulers],
            "history": self.history,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": torch.from_numpy(np.asarray(np_state[1]).astype(np.int64)),
                "numpy_pos": int(np_state[2]),
                "python": list(random.getstate()[1]),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict`."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not a tdfusion training checkpoint (format key missing or different)")
        self.fusion_net.load_state_dict(state["fusion_net"])
        self.loss_generator.load_state_dict(state["loss_generator"])
        self.task.network.load_state_dict(state["task_net"])
        self.opt_fusion.load_state_dict(state["opt_fusion"])
        self.opt_task.load_state_dict(state["opt_task"])
        self.opt_generator.load_state_dict(state["opt_generator"])
        for sched, s in zip(self.schedulers, state["schedulers"]):
            sched.load_state_dict(s)
        self.epoch = int(state["epoch"])
        self.meta_step_count = int(state["meta_step"])
        self.fusion_step_count = int(state["fusion_step"])
        self.history = list(state["history"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(("MT19937", rng["numpy"].numpy().astype(np.uint32), rng["numpy_pos"], 0, 0.0))
        random.setstate((3, tuple(rng["python"]), None))

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

    def _resume(self) -> None:
        state, path = load_training_state(self.checkpoint_path, map_location=self.device)
        check_resume_config(state.get("config", {}), self.config.to_dict(), path)
        self.load_state_dict(state)
        if self.dist.is_main:
            saved = int(state.get("world_size", 1))
            log.info(
                "resumed from %s after epoch %d (saved by %d process%s, resumed by %d)",
                path,
                self.epoch,
                saved,
                "" if saved == 1 else "es",
                self.dist.world_size,
            )

    def export_model(self, path: str | Path) -> Path:
        """Save F and G for inference (``tdfusion fuse --checkpoint``) in the documented model format."""
        from tdfusion_core.checkpoints import save_model_checkpoint

        path = Path(path)
        save_model_checkpoint(
            path,
            fusion_net=self.fusion_net,
            fusion_arch="discriminative" if self.config.discriminative else self.config.fusion_net,
            fusion_config=dict(self.config.fusion_options),
            loss_generator=self.loss_generator,
            lossgen_arch=self.config.loss_generator,
            lossgen_config=dict(self.config.loss_generator_options),
            num_sources=self.num_sources,
            extra={
                "task": "multi" if self.config.tasks else self.config.task,
                "data": self.config.data,
                **({"tasks": [dict(t) for t in self.config.tasks]} if self.config.tasks else {}),
                "epochs": self.epoch,
            },
        )
        return path

    # ------------------------------------------------------------------ figures and evaluation
    @torch.no_grad()
    def fuse(self, sources: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused image and G's weights for ``(B, K, H, W)`` sources (eval mode, no grad)."""
        was_f, was_g = self.fusion_net.training, self.loss_generator.training
        self.fusion_net.eval()
        self.loss_generator.eval()
        try:
            sources = sources.to(self.device)
            return self.fusion_net(sources).clamp(0, 1), self._weights(sources)
        finally:
            self.fusion_net.train(was_f)
            self.loss_generator.train(was_g)

    def epoch_figure(self, count: int = 4) -> np.ndarray:
        """RGB grid (titled columns, 0-1 colour bar) of sources, fused image and weight maps of the first
        ``count`` training samples (rows), at the task size."""
        from tdfusion_core.visual import weight_grid

        count = min(count, len(self.train_set))
        sources = torch.stack([resize_images(self.train_set[i].sources[None], self.task_size)[0] for i in range(count)])
        fused, weights = self.fuse(sources)
        return weight_grid(sources, fused.cpu(), weights.cpu())

    def save_epoch_figure(self, epoch: int, count: int = 4) -> Path:
        """PNG of :meth:`epoch_figure` under ``<out>/images``."""
        from tdfusion_core.visual import save_png

        assert self.out_dir is not None
        return save_png(self.out_dir / "images" / f"epoch_{epoch + 1:04d}.png", self.epoch_figure(count))

    @torch.no_grad()
    def evaluate(self, dataset: Any, batch_size: int = 4) -> dict[str, float]:
        """Task metrics of T on F's fused images of ``dataset`` (resized to the task size)."""

        def batches() -> Any:
            for start in range(0, len(dataset), batch_size):
                samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
                sources, chroma, targets = self.batcher.task_view(samples)
                fused, _ = self.fuse(sources)
                yield task_input(fused, chroma.to(self.device), self.task.input_kind), targets

        return self.task.evaluate(self.task.network, batches())
