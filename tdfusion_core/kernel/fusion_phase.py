"""The fusion phase's step (Algorithm 1, Eqs. 8-9): F learns from the fusion loss, then T from the task loss.

One step on a batch (crops ``x`` for the fusion loss, the task batch at the task's size)::

    θF ← θF − ηF ∇θF Lf(F(x), x; w = G(x))           (Eq. 8; G frozen, its weights held constant)
    θT ← θT − ηT ∇θT Lt(T(F(x_task).detach()), y)      (Eq. 9; F's output detached: T does not train F)

taken by F's and T's own optimizers (Adam in the released code). The ablations of the paper's Table 3 change it:

* ``fixed_weights``: ``w = 1/K`` instead of G's weights (ablation I);
* ``task_loss_on_fusion = λ > 0``: ``Lf + λ·Lt(T(F(x_task)))`` trains F, T frozen in that term (ablation III);
* ``discriminative``: ``If = Σ_k w_k I_k`` with ``w = G(I)`` (ablation V); F *is* that weighted sum, so Eq. 8 trains
  G directly by the task loss.

This step is the maths only: a non-finite loss or gradient skips the step before any parameter changes and says
which (:class:`FusionStepOutcome`); counting bad steps, events and multi-process wrapping are the trainer's. Its
``agree`` function lets every process of a multi-process run take the same decision.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import attrs
import torch
import torch.nn as nn

from tdfusion_core.common.colour import task_input
from tdfusion_core.common.precision import autocast
from tdfusion_core.kernel.losses import FusionLoss, fixed_weights
from tdfusion_core.kernel.meta import TaskInput
from tdfusion_core.kernel.task import Task, functional_task_loss

#: ``values -> (all finite?, floats)``; the multi-process version agrees across processes and averages
Agree = Callable[[Mapping[str, torch.Tensor]], tuple[bool, dict[str, float]]]


def agree_locally(values: Mapping[str, torch.Tensor]) -> tuple[bool, dict[str, float]]:
    """:data:`Agree` for one process: finite if every value is; the values as floats."""
    ok = all(bool(torch.isfinite(v).all()) for v in values.values())
    return ok, {k: float(v.detach()) for k, v in values.items()}


def grads_finite(module: nn.Module) -> bool:
    """Whether every gradient held by ``module``'s parameters is finite (no gradient counts as finite)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Within the block ``module``'s trainable parameters do not require grad (a loss through it trains others)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@attrs.define
class FusionStepOutcome:
    """Metrics of a step taken, or where a skipped step found a non-finite value: ``(phase, what)``."""

    metrics: dict[str, float] | None
    skipped: tuple[str, str] | None = None


@attrs.define(eq=False)
class FusionPhaseStep:
    """One step of the fusion phase (module docstring). ``fusion_forward`` runs F on one or several inputs (the
    trainer passes F itself or its DistributedDataParallel wrapper); ``task_loss_module`` (optional) computes T's
    own loss through DDP in a multi-process run."""

    fusion_net: nn.Module
    loss_generator: nn.Module
    task: Task
    fusion_loss: FusionLoss
    opt_fusion: torch.optim.Optimizer
    opt_task: torch.optim.Optimizer
    fusion_forward: nn.Module
    task_loss_module: nn.Module | None = None
    fixed_weights: bool = False
    task_loss_on_fusion: float = 0.0
    discriminative: bool = False
    autocast_dtype: torch.dtype | None = None
    agree: Agree = agree_locally

    def weights(self, sources: torch.Tensor) -> torch.Tensor:
        """Per-pixel source weights of the fusion loss: G's (no gradient), or ``1/K`` with ``fixed_weights``."""
        if self.fixed_weights:
            return fixed_weights(sources)
        with torch.no_grad():
            return self.loss_generator(sources)

    def task_loss(self, fused: torch.Tensor, batch: TaskInput, own_step: bool = False) -> torch.Tensor:
        """Task loss of T on the task input built from ``fused``; ``own_step`` (T's step) goes through
        ``task_loss_module`` when there is one, so that T's gradients are averaged over processes."""
        fused = fused if fused.dtype in (torch.float32, torch.float64) else fused.float()  # autocast's bf16 -> fp32
        images = task_input(fused, batch.chroma, self.task.input_kind)
        if own_step and self.task_loss_module is not None:
            loss: torch.Tensor = self.task_loss_module(images, batch.targets)
            return loss
        return functional_task_loss(self.task, images, batch.targets, network=self.task.network)

    def update(self, crop: torch.Tensor, batch: TaskInput) -> FusionStepOutcome:
        """Eq. 8 then Eq. 9 on one batch; nothing changes if a loss or gradient is not finite."""
        amp = autocast(crop.device, self.autocast_dtype)
        # Eq. 8: F (or G in the discriminative ablation) on the fusion loss, G's weights held constant
        self.opt_fusion.zero_grad(set_to_none=True)
        with amp:
            if self.discriminative:
                loss_f = self.task_loss(self.fusion_forward(batch.sources), batch)
                terms = {"total": loss_f}
            else:
                if self.task_loss_on_fusion:  # one (DDP) forward for both inputs of this backward
                    fused_crop, fused_task = self.fusion_forward(crop, batch.sources)
                else:
                    fused_crop = self.fusion_forward(crop)
                terms = self.fusion_loss.terms(fused_crop, crop, self.weights(crop))
                loss_f = terms["total"]
                if self.task_loss_on_fusion:
                    with frozen(self.task.network):
                        lt_f = self.task_loss(fused_task, batch)
                    loss_f = loss_f + self.task_loss_on_fusion * lt_f
        ok, f_values = self.agree({"__loss": loss_f, **terms})
        if not ok:
            return FusionStepOutcome(None, ("fusion phase (F step)", "fusion loss"))
        loss_f.backward()
        if not grads_finite(self.fusion_net):
            self.opt_fusion.zero_grad(set_to_none=True)
            return FusionStepOutcome(None, ("fusion phase (F step)", "gradient of F"))
        self.opt_fusion.step()

        # Eq. 9: T on the task loss of F's detached output
        self.opt_task.zero_grad(set_to_none=True)
        with amp:
            with torch.no_grad():
                fused = self.fusion_net(batch.sources)
            loss_t = self.task_loss(fused, batch, own_step=True)
        per_task = {f"task_loss/{k}": v for k, v in getattr(self.task, "last_losses", {}).items()}
        ok, t_values = self.agree({"task_loss": loss_t, **per_task})
        if not ok:
            return FusionStepOutcome(None, ("fusion phase (T step)", "task loss"))
        loss_t.backward()
        if not grads_finite(self.task.network):
            self.opt_task.zero_grad(set_to_none=True)
            return FusionStepOutcome(None, ("fusion phase (T step)", "gradient of T"))
        self.opt_task.step()

        metrics = {"fusion_loss": f_values["total"], "task_loss": t_values["task_loss"]}
        if "intensity" in terms:
            metrics["intensity_loss"] = f_values["intensity"]
            metrics["gradient_loss"] = f_values["gradient"]
        metrics.update({k: t_values[k] for k in per_task})
        return FusionStepOutcome(metrics)
