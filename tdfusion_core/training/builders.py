"""What a training run is built from: its dataset, task, networks F and G, optimizers and the two phases' steps.

Each builder reads :class:`~tdfusion_core.training.config.TrainConfig` and the registries; :class:`MetaTrainer` calls them in
a fixed order (dataset, task, G, F: the order fixes the networks' random initialisation under ``seed``).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn as nn

from tdfusion_core.kernel.fusion_phase import FusionPhaseStep
from tdfusion_core.kernel.losses import FusionLoss, discriminative_fusion
from tdfusion_core.kernel.meta import MetaStep, Params
from tdfusion_core.kernel.meta_phase import GeneratorStep, MetaPhaseStep, generator_update_rule
from tdfusion_core.kernel.task import Task, TaskLoss
from tdfusion_core.nets.training_passes import use_fast_pass
from tdfusion_core.plugin import registry
from tdfusion_core.plugin.registry import resolve_dataset
from tdfusion_core.training.config import TrainConfig
from tdfusion_core.training.config_io import check_task_options
from tdfusion_core.training.distributed import (
    DistContext,
    DistributedMetaStep,
    MultiInputForward,
    agree_finite,
    wrap_ddp,
)


class WeightedSum(nn.Module):
    """Discriminative fusion (ablation V): ``If = Σ_k w_k I_k`` with ``w = G(I)``."""

    def __init__(self, loss_generator: nn.Module) -> None:
        super().__init__()
        self.loss_generator = loss_generator

    def forward(self, sources: torch.Tensor) -> torch.Tensor:
        return discriminative_fusion(sources, self.loss_generator(sources))


def build_dataset(config: TrainConfig) -> Any:
    """The training split of ``config.data`` (a registered name or a folder path)."""
    return resolve_dataset(config.data, split="train", **config.data_options)


def _takes_option(factory: Any, name: str) -> bool:
    """Whether ``factory`` (a task class) names the keyword ``name`` in its signature (``**config`` does not count)."""
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def build_task(config: TrainConfig, train_set: Any) -> Task:
    """The task of ``config.task`` (or the composite of ``config.tasks``); the dataset's class count and input
    kind fill options the configuration leaves out."""
    if config.tasks:
        from tdfusion_core.kernel.multitask import MultiTask

        return MultiTask.from_specs(config.tasks, train_set)
    options = dict(config.task_options)
    check_task_options(config.task, registry.lookup("task", config.task), options)
    num_classes = getattr(train_set, "num_classes", None)
    if num_classes is not None:
        options.setdefault("num_classes", num_classes)
    input_kind = getattr(train_set, "input_kind", None)  # a dataset preset's (the released code's)
    if input_kind is not None and _takes_option(registry.lookup("task", config.task), "input_kind"):
        options.setdefault("input_kind", input_kind)
    task = registry.get_task(config.task, **options)
    task_classes = getattr(task, "num_classes", None)
    if num_classes is None and hasattr(train_set, "num_classes") and task_classes:
        # labels are then checked against the task's count when loaded, naming the file of a value out of range
        train_set.num_classes = int(task_classes)
    return task


def task_size(config: TrainConfig, train_set: Any, task: Task) -> tuple[int, int]:
    """The size T sees: the configuration's, else the dataset's, else the task's default, else the first image's."""
    for size in (config.task_size, getattr(train_set, "task_size", None), task.default_input_size):
        if size is not None:
            return (int(size[0]), int(size[1]))
    size = train_set[0].size
    return (int(size[0]), int(size[1]))


def build_networks(
    config: TrainConfig,
    num_sources: int,
    device: torch.device,
    fusion_net: nn.Module | None = None,
    loss_generator: nn.Module | None = None,
) -> tuple[nn.Module, nn.Module]:
    """``(F, G)`` on ``device``: the given modules or the registry's by name (G first); F is G's weighted sum in the
    discriminative ablation, and starts from ``config.fusion_checkpoint`` when one is set."""
    generator = (
        loss_generator
        if loss_generator is not None
        else registry.get_loss_generator(config.loss_generator, num_sources, **config.loss_generator_options)
    ).to(device)
    use_fast_pass(generator, config.fast_fusion_pass)
    if config.discriminative:
        return WeightedSum(generator), generator
    fusion = (
        fusion_net
        if fusion_net is not None
        else registry.get_fusion_net(config.fusion_net, num_sources, **config.fusion_options)
    ).to(device)
    if config.fusion_checkpoint:
        load_fusion_weights(fusion, config, Path(config.fusion_checkpoint))
    use_fast_pass(fusion, config.fast_fusion_pass)
    return fusion, generator


def load_fusion_weights(fusion_net: nn.Module, config: TrainConfig, path: Path) -> None:
    """F's weights from the model file ``path``; a file that does not fit F names the differing keys and shapes."""
    from tdfusion_core.training.checkpoints import check_state_fits, load_model_checkpoint

    state = load_model_checkpoint(path).fusion_net.state_dict()
    check_state_fits(fusion_net, state, f"{config.fusion_net!r} {config.fusion_options}", str(path))
    fusion_net.load_state_dict(state)


@attrs.define(eq=False)
class Optimizers:
    """F's, T's and G's optimizers and their StepLR schedules (in that order)."""

    fusion: torch.optim.Optimizer
    task: torch.optim.Optimizer
    generator: torch.optim.Optimizer
    schedulers: list[Any]


def build_optimizers(config: TrainConfig, fusion_net: nn.Module, task: Task, generator: nn.Module) -> Optimizers:
    """Adam for F, the task's own optimizer for T (at ``lr_task``), ``generator_update``'s for G, StepLR for all."""
    opt_fusion = torch.optim.Adam(fusion_net.parameters(), lr=config.lr_fusion)
    opt_task = task.make_optimizer(task.network.parameters())
    for group in opt_task.param_groups:
        group["lr"] = config.lr_task
    rule, params, lr = config.generator_update, generator.parameters(), config.lr_generator
    opt_generator: torch.optim.Optimizer
    if rule in ("maxnorm", "adam"):  # maxnorm only uses the optimizer's scheduled learning rate
        opt_generator = torch.optim.Adam(params, lr=lr, eps=1e-10)
    elif rule == "adamw":
        opt_generator = torch.optim.AdamW(params, lr=lr, eps=1e-10)
    else:
        opt_generator = torch.optim.SGD(params, lr=lr)
    schedulers = [
        torch.optim.lr_scheduler.StepLR(opt, step_size=config.lr_step_size, gamma=config.lr_gamma)
        for opt in (opt_fusion, opt_task, opt_generator)
    ]
    return Optimizers(opt_fusion, opt_task, opt_generator, schedulers)


def generator_update(config: TrainConfig, generator: nn.Module, optimizer: torch.optim.Optimizer) -> GeneratorStep:
    """G's update of ``config.generator_update``; ``maxnorm`` with ``generator_max_change`` bounds G's change
    (:func:`~tdfusion_core.training.generator_stats.bounded_maxnorm_update`, logged as ``g/step_scale``)."""
    max_change = config.generator_max_change
    if config.generator_update != "maxnorm" or max_change is None:
        return generator_update_rule(config.generator_update, generator, optimizer)

    def bounded(grad_g: Params, crop: torch.Tensor) -> dict[str, float]:
        from tdfusion_core.training.generator_stats import bounded_maxnorm_update

        lr = optimizer.param_groups[0]["lr"]
        return {"g/step_scale": bounded_maxnorm_update(generator, grad_g, lr, crop, max_change)}

    return bounded


# The two phase builders take the same parts of a run by name (each reads alone), so their signatures look alike.
def build_meta_phase(
    config: TrainConfig,
    fusion_net: nn.Module,
    generator: nn.Module,
    task: Task,
    fusion_loss: FusionLoss,
    optimizers: Optimizers,
    dist: DistContext,
    autocast_dtype: torch.dtype | None,
) -> MetaPhaseStep:
    """The meta phase's step: :class:`MetaStep` (or its multi-process version) with the configured T' rule and
    G update."""
    args = (fusion_net, generator, task, fusion_loss, config.meta_mode)
    meta_step = (
        DistributedMetaStep(*args, autocast_dtype=autocast_dtype, ctx=dist, sync=config.meta_sync)
        if dist.enabled
        else MetaStep(*args, autocast_dtype=autocast_dtype)
    )
    return MetaPhaseStep(
        meta_step,
        optimizers.fusion,
        optimizers.task,
        generator_update(config, generator, optimizers.generator),
        task_step=config.task_step,
        inner_lr=config.inner_lr,
    )


def build_fusion_phase(
    config: TrainConfig,
    fusion_net: nn.Module,
    generator: nn.Module,
    task: Task,
    fusion_loss: FusionLoss,
    optimizers: Optimizers,
    dist: DistContext,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
) -> FusionPhaseStep:
    """The fusion phase's step over F's and T's forwards, DistributedDataParallel-wrapped with several processes
    (build it after the modules are broadcast)."""
    fusion_forward: nn.Module = MultiInputForward(fusion_net)
    task_loss_module: nn.Module | None = None
    if dist.enabled:
        fusion_forward = wrap_ddp(fusion_forward, device, config.find_unused_parameters)
        task_loss_module = wrap_ddp(TaskLoss(task, task.network), device, config.find_unused_parameters)
    return FusionPhaseStep(
        fusion_net,
        generator,
        task,
        fusion_loss,
        optimizers.fusion,
        optimizers.task,
        fusion_forward,
        task_loss_module,
        fixed_weights=config.fixed_weights,
        task_loss_on_fusion=config.task_loss_on_fusion,
        discriminative=config.discriminative,
        autocast_dtype=autocast_dtype,
        agree=lambda values: agree_finite(values, dist),
    )
