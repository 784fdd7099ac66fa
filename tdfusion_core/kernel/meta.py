"""The functional meta step: inner update of F and T, outer (meta) gradient of the loss generator G.

With fusion loss ``Lf(θF, θG)`` on the meta-train crop ``x_mtr`` and task loss ``Lt`` on the meta-test batch
``x_mts`` (paper Eqs. 4-7)::

    θF' = θF − η ∇θF Lf(θF, θG)                       (inner update of F; no graph kept)
    θT' = one step of T on Lt(T(sg[F_θF(x_mtr)]))     (the PRE-update F, output detached; rule: task_update)
    ∂Lt(T'(F'(x_mts)))/∂θG = −η ∂/∂θG ⟨∇θF Lf(θF, θG), v⟩,   v = ∂Lt/∂θF'

and ``⟨∇θF Lf, v⟩ = Σ_pixels ∂Lf/∂If · (J_F v)``, where ``J_F v`` is the forward-mode derivative of F's output at
θF (not θF') along ``v``. Three modes compute the G gradient:

* ``"jvp"`` (default, exact): ``J_F v`` by forward mode and a double backward through the loss only. An F with a
  linearized pass (``linearized_pass``: two-source ReFusion's fast pass) records step 1's forward and replays only
  the tangent; any other F (or autocast) gets one ``torch.func.jvp``.
* ``"double-backward"`` (exact, generic, slow): ``autograd.grad(create_graph=True)`` through F, as the released code.
* ``"finite-difference"`` (approximate, DARTS): ``−η (∇θG Lf(θF + εv) − ∇θG Lf(θF − εv)) / 2ε``.

T' is trained on the output of F *before* its inner update, detached (the released ``train.py`` calls
``Fusion_model(...)`` without ``meta=True`` after ``inner_update``), so T' is a constant of the outer objective.
Three rules form θT' (``TrainConfig.task_step``, :func:`task_step_rule`):

* ``"adam"`` (released): T's real optimizer takes one ``step()`` on the inner task gradient, so its moments and
  step count advance; θT' are the stepped weights; T's weights are then put back (:class:`OptimizerTaskStep`);
* ``"adam-readonly"``: the same Adam formula applied to copies, the optimizer state only read;
* ``"sgd"`` (Eq. 5 as printed): ``θT' = θT − lr·g``.

T itself is otherwise never mutated: T' is applied by substituting its trainable parameters (frozen ones,
``requires_grad=False``, keep their values) (:mod:`tdfusion_core.kernel.functional`), and the buffers (BatchNorm
statistics) of F, G and T are restored after the step. Nothing is written to disk.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import attrs
import torch
import torch.nn as nn
from torch.func import jvp

from tdfusion_core.common.colour import task_input
from tdfusion_core.common.precision import autocast
from tdfusion_core.kernel.functional import call_with_parameters, substituted_parameters
from tdfusion_core.kernel.losses import FusionLoss, intensity_loss
from tdfusion_core.kernel.task import Task, functional_task_loss

MetaMode = Literal["jvp", "double-backward", "finite-difference"]
TaskStepRule = Literal["adam", "adam-readonly", "sgd"]
TASK_STEP_RULES: tuple[str, ...] = ("adam", "adam-readonly", "sgd")
Params = dict[str, torch.Tensor]
#: ``v -> J_F v``: F's output derivative along the parameter tangent ``v`` (by name), at a fixed point
TangentMap = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]


@attrs.define
class TaskInput:
    """What the task sees for one batch: sources ``(B, K, H, W)``, chroma ``(B, K, 2, H, W)``, collated targets."""

    sources: torch.Tensor
    chroma: torch.Tensor
    targets: Any


@attrs.define
class MetaStepResult:
    """Outcome of one meta step: G's gradient (by parameter name) and detached scalars for logging."""

    grad_g: Params
    task_loss: torch.Tensor
    fusion_loss: torch.Tensor
    inner_task_loss: torch.Tensor
    finite: bool
    #: θF' and θT' (detached), for inspection
    fusion_params: Params = attrs.field(factory=dict, repr=False)
    task_params: Params = attrs.field(factory=dict, repr=False)


def detached_params(module: nn.Module) -> Params:
    """``{name: parameter.detach()}`` (shares storage; safe to use as functional parameters)."""
    return {name: p.detach() for name, p in module.named_parameters()}


@contextmanager
def preserved_buffers(*modules: nn.Module) -> Iterator[None]:
    """Restore every buffer (e.g. BatchNorm running statistics) of ``modules`` on exit."""
    saved = [{n: b.detach().clone() for n, b in m.named_buffers()} for m in modules]
    try:
        yield
    finally:
        with torch.no_grad():
            for module, state in zip(modules, saved):
                for name, buf in module.named_buffers():
                    buf.copy_(state[name])


#: class names of stochastic-depth layers (timm's ``DropPath``, torchvision's ``StochasticDepth``)
_DROP_PATH_NAMES = ("DropPath", "StochasticDepth", "DropBlock2d")


def check_deterministic_forward(module: nn.Module) -> None:
    """Refuse a ``jvp`` meta step when ``module`` (F) has dropout or drop-path active (train mode, p > 0).

    The JVP mode runs F twice (the inner gradient, then the JVP); with random masks the two passes see different
    networks and the meta-gradient is no longer exact. ``double-backward`` differentiates one pass and stays exact.
    """
    for name, m in module.named_modules():
        active = m.training and (
            (isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0)
            or (type(m).__name__ in _DROP_PATH_NAMES and float(getattr(m, "drop_prob", getattr(m, "p", 0.0))) > 0)
        )
        if active:
            raise ValueError(
                f"meta_mode 'jvp' needs a deterministic fusion network, but F's layer {name or '<root>'} "
                f"({type(m).__name__}) drops at random in train mode; set meta_mode: double-backward "
                "(or disable the dropout)"
            )


def _all_finite(tensors: Any) -> bool:
    values = list(tensors.values()) if isinstance(tensors, Mapping) else list(tensors)
    if not values:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in values]).all())


def sgd_task_step(lr: float) -> Callable[[Params, Params], Params]:
    """T' rule of the paper (Eq. 5): ``θT' = θT − lr·g``."""

    def step(params: Params, grads: Params) -> Params:
        return {n: p - lr * grads[n] for n, p in params.items()}

    return step


def adam_task_step(optimizer: torch.optim.Optimizer, network: nn.Module) -> Callable[[Params, Params], Params]:
    """T' rule ``"adam-readonly"``: one step of T's own Adam (or AdamW) state, applied to copies.

    The optimizer's state and hyper-parameters are read, never written, so unlike the released code (see
    :class:`OptimizerTaskStep`) the moments and step count do not advance during the meta phase.
    """
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        raise TypeError(
            f"task_step='adam-readonly' needs the task optimizer to be Adam or AdamW, got {type(optimizer).__name__}; "
            "use task_step='sgd'"
        )
    decoupled = isinstance(optimizer, torch.optim.AdamW)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    by_name = dict(network.named_parameters())

    def step(params: Params, grads: Params) -> Params:
        out: Params = {}
        for name, p in params.items():
            param = by_name[name]
            group = group_of[id(param)]
            if group.get("amsgrad") or group.get("maximize"):
                raise ValueError("the functional Adam step supports neither amsgrad nor maximize")
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            g = grads[name]
            state = optimizer.state.get(param, {})
            step_no = float(state["step"]) + 1 if "step" in state else 1.0
            m = state.get("exp_avg", torch.zeros_like(p))
            v = state.get("exp_avg_sq", torch.zeros_like(p))
            base = p
            if wd and decoupled:
                base = p * (1 - lr * wd)
            elif wd:
                g = g + wd * p
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * g * g
            denom = (v.sqrt() / math.sqrt(1 - beta2**step_no)) + eps
            out[name] = base - (lr / (1 - beta1**step_no)) * m / denom
        return out

    return step


class OptimizerTaskStep:
    """T' rule ``"adam"``, the released code's: one real ``optimizer.step()`` of T's own optimizer.

    ``(θT, g) -> θT'``: ``g`` is written to the parameters' ``.grad``, the optimizer steps (so its state, e.g.
    Adam's moments and step count, advances as in ``train.py``'s ``optimizer2.step()``), the stepped weights are
    read (detached copies) and T's weights and previous ``.grad`` are put back. Works for any
    ``torch.optim.Optimizer``; parameters without a gradient in ``g`` get ``.grad = None`` (skipped by the step).
    With several processes ``g`` must be the same everywhere (averaged) so that every state advances alike.
    """

    #: the optimizer's state changes (the distributed step then averages T's inner gradient in every mode)
    advances_state = True

    def __init__(self, optimizer: torch.optim.Optimizer, network: nn.Module) -> None:
        self.optimizer = optimizer
        self.network = network

    def __call__(self, params: Params, grads: Params) -> Params:
        named = dict(self.network.named_parameters())
        saved = {n: (p.detach().clone(), p.grad) for n, p in named.items()}
        try:
            with torch.no_grad():
                for name, p in named.items():
                    if name in params:
                        p.copy_(params[name])
                    p.grad = grads[name].to(p.dtype).clone() if name in grads else None
            self.optimizer.step()
            return {name: named[name].detach().clone() for name in params}
        finally:
            with torch.no_grad():
                for name, p in named.items():
                    value, grad = saved[name]
                    p.copy_(value)
                    p.grad = grad


def task_step_rule(
    rule: str, optimizer: torch.optim.Optimizer, network: nn.Module
) -> Callable[[Params, Params], Params]:
    """The T' rule named ``rule`` (``TrainConfig.task_step``) for T's ``optimizer`` and ``network``."""
    if rule == "adam":
        return OptimizerTaskStep(optimizer, network)
    if rule == "adam-readonly":
        return adam_task_step(optimizer, network)
    if rule == "sgd":
        return sgd_task_step(optimizer.param_groups[0]["lr"])
    raise ValueError(f"task_step must be one of {', '.join(TASK_STEP_RULES)}, not {rule!r}")


@attrs.define
class MetaStep:
    """One meta step of Algorithm 1 over modules F, G and a task T (see the module docstring for the maths).

    Args:
        fusion_net: F, ``(B, K, H, W) -> (B, 1, H, W)``.
        loss_generator: G, ``(B, K, H, W) -> (B, K, H, W)`` weights.
        task: the downstream task; its network is T.
        fusion_loss: ``Lf``.
        mode: how G's gradient is computed.
        fd_epsilon: finite-difference step ``ε = fd_epsilon / ‖v‖`` (DARTS uses 0.01).
        autocast_dtype: run forward passes under ``torch.autocast`` with this dtype (e.g. ``torch.bfloat16``).
    """

    fusion_net: nn.Module
    loss_generator: nn.Module
    task: Task
    fusion_loss: FusionLoss = attrs.field(factory=FusionLoss)
    mode: MetaMode = attrs.field(
        default="jvp", validator=attrs.validators.in_(("jvp", "double-backward", "finite-difference"))
    )
    fd_epsilon: float = 0.01
    autocast_dtype: torch.dtype | None = None

    # ----------------------------------------------------------------- helpers
    def _fuse(self, params: Mapping[str, torch.Tensor], sources: torch.Tensor) -> torch.Tensor:
        return call_with_parameters(self.fusion_net, params, (sources,))

    def _fuse_linearized(self, params: Params, sources: torch.Tensor) -> tuple[torch.Tensor, TangentMap | None]:
        """F's output at ``params`` and, when F has a linearized pass (``linearized_pass``, e.g. ReFusion's fast
        pass: :func:`~tdfusion_core.nets.refusion_tangent.linearize`), the map ``v -> J_F v`` at the same point, so
        that step 4 needs no second forward of F. ``None`` (another F, another mode, or autocast): step 4 runs
        ``torch.func.jvp``."""
        linearized = getattr(self.fusion_net, "linearized_pass", None)
        if self.mode != "jvp" or linearized is None or self.autocast_dtype is not None:
            return self._fuse(params, sources), None
        with substituted_parameters(self.fusion_net, params):
            fused, tangent_map = linearized(self.fusion_net, sources)
        return fused, tangent_map

    def _task_loss(self, fused: torch.Tensor, batch: TaskInput, params: Params) -> torch.Tensor:
        images = task_input(fused, batch.chroma, self.task.input_kind)
        loss = functional_task_loss(self.task, images, batch.targets, params=params)
        return loss if loss.dtype in (torch.float32, torch.float64) else loss.float()

    def _g_dependent_loss(self, fused: torch.Tensor, sources: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The part of ``Lf`` that depends on G's weights: ``Lint`` alone for a :class:`FusionLoss`.

        Step 4 differentiates w.r.t. θG; ``α·Lgrad`` (Sobel of the fused image against the sources' strongest
        Sobel response) has no path to θG, so its term of ``∂Lf/∂If`` contributes exactly zero there and is not
        computed. Any other loss object is used whole.
        """
        if type(self.fusion_loss) is FusionLoss:  # a subclass may add terms that do depend on G
            return intensity_loss(fused, sources, weights, self.fusion_loss.intensity)
        return self.fusion_loss(fused, sources, weights)

    def _intensity_grad(self, fused: torch.Tensor, sources: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The θG-dependent part of ``∂Lf/∂If`` with the graph to ``weights`` kept (the only double-backward,
        through the loss alone; see :meth:`_g_dependent_loss`)."""
        fused = fused.detach().requires_grad_(True)
        loss = self._g_dependent_loss(fused, sources, weights)
        (grad,) = torch.autograd.grad(loss, fused, create_graph=True)
        return grad

    # ----------------------------------------------------------------- hooks for multi-process steps
    def _reduce(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Combine a first-order quantity over processes (identity here; averaged by the distributed step)."""
        return dict(tensors)

    def _reduce_task_grads(self, grads: Mapping[str, torch.Tensor], advances_state: bool) -> dict[str, torch.Tensor]:
        """T's inner gradient; ``advances_state``: the T' rule steps T's real optimizer, whose state must then
        advance identically in every process (the distributed step averages it whatever ``sync``)."""
        return self._reduce(grads)

    def _result(
        self,
        grad_g: Params,
        lt: torch.Tensor,
        lf: torch.Tensor,
        lt_inner: torch.Tensor,
        theta_f1: Params,
        theta_t1: Params,
    ) -> MetaStepResult:
        """Package the step's outcome (the distributed step also averages G's gradient and the losses here)."""
        finite = bool(torch.isfinite(lt).all() and torch.isfinite(lf).all()) and _all_finite(grad_g)
        return MetaStepResult(
            grad_g=grad_g,
            task_loss=lt,
            fusion_loss=lf,
            inner_task_loss=lt_inner,
            finite=finite,
            fusion_params=theta_f1,
            task_params=theta_t1,
        )

    # ----------------------------------------------------------------- the step
    def compute(
        self,
        mtr_crop: torch.Tensor,
        mtr_task: TaskInput,
        mts_task: TaskInput,
        inner_lr: float,
        task_update: Callable[[Params, Params], Params],
    ) -> MetaStepResult:
        """G's meta-gradient for one (meta-train, meta-test) pair; no module is modified (the ``"adam"`` T' rule
        advances T's optimizer state, as the released code does).

        Args:
            mtr_crop: meta-train sources for the fusion loss (the crops), ``(B, K, h, w)``.
            mtr_task: meta-train batch at the task's size, for the T' step.
            mts_task: meta-test batch at the task's size, for the outer task loss.
            inner_lr: η, the inner learning rate of F (the released code uses F's current learning rate).
            task_update: ``(θT, g) -> θT'`` (:func:`task_step_rule`: :class:`OptimizerTaskStep`,
                :func:`adam_task_step` or :func:`sgd_task_step`).
        """
        F, G, T = self.fusion_net, self.loss_generator, self.task.network
        theta_g = [p for p in G.parameters() if p.requires_grad]
        g_names = [n for n, p in G.named_parameters() if p.requires_grad]
        double_backward = self.mode == "double-backward"
        if self.mode == "jvp":
            check_deterministic_forward(F)
        with preserved_buffers(F, G, T), autocast(mtr_crop.device, self.autocast_dtype):
            # 1. inner update of F on the meta-train crop (Eq. 4), G's weights held constant
            weights = G(mtr_crop)
            theta_f = {n: p.detach().requires_grad_(True) for n, p in F.named_parameters() if p.requires_grad}
            fused, tangent_map = self._fuse_linearized(theta_f, mtr_crop)
            lf = self.fusion_loss(fused, mtr_crop, weights.detach())
            if double_backward:  # the generic path keeps ∇θF Lf as a function of θG for step 4
                lf_graph = self.fusion_loss(fused, mtr_crop, weights)
                grads_f_graph = torch.autograd.grad(lf_graph, list(theta_f.values()), create_graph=True)
                grads_f = {n: g.detach() for n, g in zip(theta_f, grads_f_graph)}
            else:
                grads_f = dict(zip(theta_f, torch.autograd.grad(lf, list(theta_f.values()))))
            grads_f = self._reduce(grads_f)
            theta_f1 = {n: (p.detach() - inner_lr * grads_f[n]).detach() for n, p in theta_f.items()}

            # 2. T' = one step of T on T(F_θF(x_mtr)), the pre-update F's output detached (Eq. 5, released code)
            theta_t = {n: p.detach().requires_grad_(True) for n, p in T.named_parameters() if p.requires_grad}
            with torch.no_grad():
                fused_mtr = self._fuse(theta_f, mtr_task.sources)
            lt_inner = self._task_loss(fused_mtr, mtr_task, theta_t)
            grads_t = self._reduce_task_grads(
                dict(zip(theta_t, torch.autograd.grad(lt_inner, list(theta_t.values())))),
                bool(getattr(task_update, "advances_state", False)),
            )
            theta_t1 = {n: p.detach() for n, p in task_update(dict(theta_t), grads_t).items()}

            # 3. v = ∂Lt(T'(F'(x_mts)))/∂θF' (Eq. 6), an ordinary backward through T' and F'
            leaves = {n: p.clone().requires_grad_(True) for n, p in theta_f1.items()}
            lt = self._task_loss(self._fuse(leaves, mts_task.sources), mts_task, theta_t1)
            grads_v = torch.autograd.grad(lt, list(leaves.values()), allow_unused=True)
            v = self._reduce(
                {n: (g if g is not None else torch.zeros_like(leaves[n])) for n, g in zip(leaves, grads_v)}
            )

            # 4. −η ∂/∂θG ⟨∇θF Lf(θF, θG), v⟩ (Eq. 7)
            if self.mode == "jvp":
                if tangent_map is not None:  # J_F v from step 1's recorded forward
                    fused_at, jv = fused.detach(), tangent_map(v)
                else:
                    primals = {n: p.detach() for n, p in theta_f.items()}
                    fused_at, jv = jvp(lambda p: self._fuse(p, mtr_crop), (primals,), (v,))  # type: ignore[misc]
                grad_g = self._jvp_grad(fused_at, jv, mtr_crop, weights, inner_lr, g_names, theta_g)
            elif self.mode == "finite-difference":
                grad_g = self._finite_difference_grad(theta_f, v, mtr_crop, inner_lr, g_names, theta_g)
            else:
                dot = sum((g * v[n].to(g.dtype)).sum() for n, g in zip(theta_f, grads_f_graph))
                grads = torch.autograd.grad(dot, theta_g, allow_unused=True)  # type: ignore[arg-type]
                grad_g = {
                    n: (-inner_lr * g if g is not None else torch.zeros_like(p))
                    for n, p, g in zip(g_names, theta_g, grads)
                }

        return self._result(
            {n: g.detach() for n, g in grad_g.items()}, lt.detach(), lf.detach(), lt_inner.detach(), theta_f1, theta_t1
        )

    def _jvp_grad(
        self,
        fused: torch.Tensor,
        jv: torch.Tensor,
        sources: torch.Tensor,
        weights: torch.Tensor,
        inner_lr: float,
        g_names: list[str],
        theta_g: Sequence[torch.Tensor],
    ) -> Params:
        """Step 4 from ``fused = F(x)`` and ``jv = J_F v`` at θF: ``−η ∂/∂θG Σ ∂Lf/∂If · J_F v``."""
        dlf_dfused = self._intensity_grad(fused, sources, weights)
        s = (dlf_dfused * jv.detach()).sum()
        grads = torch.autograd.grad(s, theta_g, allow_unused=True)
        return {
            n: (-inner_lr * g if g is not None else torch.zeros_like(p)) for n, p, g in zip(g_names, theta_g, grads)
        }

    def _finite_difference_grad(
        self,
        theta_f: Params,
        v: Params,
        sources: torch.Tensor,
        inner_lr: float,
        g_names: list[str],
        theta_g: Sequence[torch.Tensor],
    ) -> Params:
        norm = torch.sqrt(sum((t.float() ** 2).sum() for t in v.values()))  # type: ignore[arg-type]
        eps = self.fd_epsilon / float(norm.clamp_min(1e-12))
        results = []
        for sign in (1.0, -1.0):
            shifted = {n: p.detach() + sign * eps * v[n] for n, p in theta_f.items()}
            with torch.no_grad():
                fused = self._fuse(shifted, sources)
            loss = self._g_dependent_loss(fused, sources, self.loss_generator(sources))
            results.append(torch.autograd.grad(loss, theta_g, allow_unused=True))
        out: Params = {}
        for n, p, gp, gm in zip(g_names, theta_g, *results):
            gp = gp if gp is not None else torch.zeros_like(p)
            gm = gm if gm is not None else torch.zeros_like(p)
            out[n] = -inner_lr * (gp - gm) / (2 * eps)
        return out


def apply_maxnorm_update(module: nn.Module, grads: Mapping[str, torch.Tensor], lr: float) -> None:
    """The released code's G update: ``θ −= lr · g / max|g|`` with the maximum over all of G's parameters."""
    if not grads:
        return
    max_abs = torch.stack([g.abs().max() for g in grads.values()]).max()
    if float(max_abs) <= 0:
        return
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name in grads:
                p.add_(grads[name] / max_abs, alpha=-lr)


def apply_optimizer_update(
    module: nn.Module, grads: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer
) -> None:
    """Set ``p.grad`` from ``grads`` and take one optimizer step."""
    for name, p in module.named_parameters():
        if name in grads:
            p.grad = grads[name].to(p.dtype).clone()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
