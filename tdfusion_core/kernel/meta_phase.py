"""The meta phase's step (Algorithm 1, Eqs. 4-7 and G's update): one call from batches to an updated G.

One step on a meta-train batch (crops ``x_mtr`` and its task batch) and a meta-test batch ``x_mts``::

    η   = inner_lr, or F's current (scheduled) learning rate, as the released code
    T'  = task_step's rule over T's optimizer            (adam | adam-readonly | sgd: meta.task_step_rule)
    g_G = ∂Lt(T'(F'(x_mts)))/∂θG                          (Eqs. 4-7: meta.MetaStep.compute, with η and T')
    θG ← θG − lr·g_G / max|g_G|                           (generator_update "maxnorm", released; or G's optimizer)

This step is the maths only: a non-finite loss or meta-gradient leaves G untouched and says so
(:class:`MetaPhaseOutcome`); counting bad steps, events, G's statistics and the ablation that trains F and T inside
the meta loop are the trainer's. With several processes ``meta_step`` is a
:class:`~tdfusion_core.training.distributed.DistributedMetaStep`, whose gradient is the same in every process, so every
process takes the same update.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import torch
import torch.nn as nn

from tdfusion_core.kernel.meta import (
    MetaStep,
    MetaStepResult,
    Params,
    TaskInput,
    apply_maxnorm_update,
    apply_optimizer_update,
    task_step_rule,
)

#: ``(G's meta-gradient, meta-train crops) -> metrics of the update`` (e.g. ``g/step_scale``); it changes G
GeneratorStep = Callable[[Params, torch.Tensor], dict[str, float]]


def generator_update_rule(rule: str, generator: nn.Module, optimizer: torch.optim.Optimizer) -> GeneratorStep:
    """G's update named ``rule`` (``TrainConfig.generator_update``): ``"maxnorm"`` (released: ``θ −= lr·g/max|g|``
    with the optimizer's scheduled learning rate) or one step of G's optimizer (``adam``, ``adamw``, ``sgd``)."""
    if rule == "maxnorm":

        def maxnorm(grad_g: Params, crop: torch.Tensor) -> dict[str, float]:
            apply_maxnorm_update(generator, grad_g, optimizer.param_groups[0]["lr"])
            return {}

        return maxnorm

    def optimizer_step(grad_g: Params, crop: torch.Tensor) -> dict[str, float]:
        apply_optimizer_update(generator, grad_g, optimizer)
        return {}

    return optimizer_step


@attrs.define
class MetaPhaseOutcome:
    """Metrics of a meta step (also of a skipped one), the step's result, and ``skipped = (phase, what)`` when a
    non-finite value left G unchanged."""

    metrics: dict[str, float]
    result: MetaStepResult
    skipped: tuple[str, str] | None = None


@attrs.define(eq=False)
class MetaPhaseStep:
    """One whole meta step (module docstring): T' rule, G's meta-gradient and G's update.

    Args:
        meta_step: computes G's meta-gradient (Eqs. 4-7); F, G and T are its modules.
        opt_fusion: F's optimizer; its current learning rate is η unless ``inner_lr`` is set.
        opt_task: T's optimizer, read (or stepped, ``task_step="adam"``) by the T' rule.
        update_generator: G's update (:func:`generator_update_rule`).
        task_step: the T' rule's name (:func:`~tdfusion_core.kernel.meta.task_step_rule`).
        inner_lr: η; ``None``: F's current learning rate.
    """

    meta_step: MetaStep
    opt_fusion: torch.optim.Optimizer
    opt_task: torch.optim.Optimizer
    update_generator: GeneratorStep
    task_step: str = "adam"
    inner_lr: float | None = None

    def eta(self) -> float:
        """η, the inner learning rate of F."""
        return self.inner_lr if self.inner_lr is not None else float(self.opt_fusion.param_groups[0]["lr"])

    def task_rule(self) -> Callable[[Params, Params], Params]:
        """The T' rule at T's current learning rate."""
        return task_step_rule(self.task_step, self.opt_task, self.meta_step.task.network)

    def update(self, crop: torch.Tensor, mtr_task: TaskInput, mts_task: TaskInput) -> MetaPhaseOutcome:
        """Eqs. 4-7 then G's update on one (meta-train, meta-test) pair; G is unchanged if a value is not finite."""
        result = self.meta_step.compute(crop, mtr_task, mts_task, self.eta(), self.task_rule())
        metrics = {
            "task_loss": float(result.task_loss),
            "fusion_loss": float(result.fusion_loss),
            "inner_task_loss": float(result.inner_task_loss),
        }
        if not result.finite:
            return MetaPhaseOutcome(metrics, result, ("meta phase", "task loss, fusion loss or G gradient"))
        metrics.update(self.update_generator(result.grad_g, crop))
        return MetaPhaseOutcome(metrics, result)
