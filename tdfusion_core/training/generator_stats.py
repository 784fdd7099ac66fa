"""What the loss generator G is doing: its weights' entropy and mean per source, in both source orders.

G maps sources ``(B, K, H, W)`` to per-pixel weights ``w`` (a softmax over K). Three numbers say whether it is
healthy:

* **mean weight per source** ``mean(w_k)``: a source whose mean weight falls towards 0 is being fused away;
* **entropy** ``−Σ_k w_k log w_k / log K`` averaged over pixels (1 = uniform weights, 0 = one source per pixel);
* **mean max-weight** ``mean(max_k w_k)``: near 1 the softmax is *saturated*, its gradient vanishes and a
  max-normalised step (the released G update) still moves G by the full learning rate, so G can only go further.

Each is measured twice: on the sources as given and with the source order reversed (the weights of the reversed
input are reversed back, so index k is always the same source). A G that learned something about the *modalities*
gives the same weights in both orders; a difference (``order_gap``) is a preference for an input *position*.

:class:`SaturationGuard` warns (once per run) when the mean max-weight passes a threshold (default 0.98).
:func:`weight_map_signal` and :func:`signal_by_region` say *why* G moves: the meta-gradient per pixel of its weight
map, summarised on the pixels that only one source shows (docs/experiments.md, "Why G does not learn the visible
regions").
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from tdfusion_core.common.modes import eval_mode

__all__ = [
    "SATURATION_THRESHOLD",
    "SaturationGuard",
    "bounded_maxnorm_update",
    "generator_stats",
    "preference_scores",
    "signal_by_region",
    "weight_map_signal",
    "weight_stats",
]

#: mean max-weight above which G's softmax counts as saturated
SATURATION_THRESHOLD = 0.98


def weight_stats(weights: torch.Tensor) -> dict[str, float]:
    """``entropy``, ``max_weight`` and ``weight/source{k}`` of weights ``(B, K, H, W)`` (see the module docstring)."""
    w = weights.detach().float()
    k = w.shape[1]
    entropy = -(w * w.clamp_min(1e-12).log()).sum(dim=1) / math.log(k)
    out = {"entropy": float(entropy.mean()), "max_weight": float(w.max(dim=1).values.mean())}
    out.update({f"weight/source{i}": float(m) for i, m in enumerate(w.mean(dim=(0, 2, 3)))})
    return out


@torch.no_grad()
def weights_both_orders(generator: nn.Module, sources: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """G's weights ``(B, K, H, W)`` for the sources as given and for the sources reversed (mapped back to the given
    order, so ``swapped[:, k]`` is source k's weight either way); G runs in eval mode and its mode is restored."""
    with eval_mode(generator):
        return generator(sources).float(), generator(sources.flip(1)).float().flip(1)


@torch.no_grad()
def generator_stats(generator: nn.Module, sources: torch.Tensor, prefix: str = "g/") -> dict[str, float]:
    """Statistics of ``generator`` on ``sources`` in the given and the reversed source order.

    Keys (with ``prefix``): ``entropy``, ``max_weight``, ``weight/source{k}``, the same under ``swapped/``, and
    ``order_gap`` = mean over pixels and sources of ``|w_k(given) − w_k(reversed)|`` (0 for an order-equivariant G).
    G is evaluated in eval mode and its mode restored.
    """
    given, swapped = weights_both_orders(generator, sources)
    out = {f"{prefix}{k}": v for k, v in weight_stats(given).items()}
    out.update({f"{prefix}swapped/{k}": v for k, v in weight_stats(swapped).items()})
    out[f"{prefix}order_gap"] = float((given - swapped).abs().mean())
    return out


class SaturationGuard:
    """Warns once when G's mean max-weight (either source order) exceeds ``threshold``.

    Saturation is how a collapse starts: the softmax's gradient vanishes, yet the released max-normalised update
    keeps taking full-size steps, so nothing pulls G back. The warning names the remedies.
    """

    def __init__(self, threshold: float = SATURATION_THRESHOLD, prefix: str = "g/") -> None:
        self.threshold = threshold
        self.prefix = prefix
        self.warned = False

    def check(self, stats: dict[str, float], step: int | None = None) -> bool:
        """Whether ``stats`` (from :func:`generator_stats`) show saturation; warns the first time."""
        worst = max(stats.get(f"{self.prefix}max_weight", 0.0), stats.get(f"{self.prefix}swapped/max_weight", 0.0))
        saturated = worst > self.threshold
        if saturated and not self.warned:
            self.warned = True
            at = f" at meta step {step}" if step is not None else ""
            warnings.warn(
                f"loss generator saturated{at}: mean max-weight {worst:.3f} > {self.threshold} (one source per "
                "pixel; the fusion loss is fusing the other away). Lower lr_generator (released: 1e-4) or see "
                "docs/concepts.md, 'Keeping G from collapsing'.",
                RuntimeWarning,
                stacklevel=2,
            )
        return saturated


@torch.no_grad()
def preference_scores(
    generator: nn.Module, sources: torch.Tensor, only: torch.Tensor, infrared: int = 0, visible: int = 1
) -> dict[str, float | None]:
    """Does G prefer the source that shows a region? Measured in both source orders, against ground truth.

    ``only`` ``(B, H, W)`` marks pixels that only the infrared (1) or only the visible source (2) shows
    (:attr:`tdfusion_core.data.synthetic.Scene.only`). Returns, for the given order and (``swapped_``) the reversed
    one:

    * ``infrared_pref``: fraction of infrared-only pixels where G's infrared weight is above ½;
    * ``visible_pref``: fraction of visible-only pixels where G's visible weight is above ½;
    * ``infrared_weight`` / ``visible_weight``: mean weight of the right source on those pixels;
    * ``min_source_weight``: the smallest mean weight of a source over all pixels (near 0: G has collapsed).

    A G that learned the modalities scores the same in both orders; a score that flips with the order is a
    preference for an input position. ``None`` where a region has no pixels.
    """
    given, swapped = weights_both_orders(generator, sources)
    ir_px, vis_px = only == 1, only == 2
    out: dict[str, float | None] = {}
    for prefix, w in (("", given), ("swapped_", swapped)):
        w_ir, w_vis = w[:, infrared], w[:, visible]
        out[f"{prefix}infrared_pref"] = float((w_ir[ir_px] > 0.5).float().mean()) if ir_px.any() else None
        out[f"{prefix}visible_pref"] = float((w_vis[vis_px] > 0.5).float().mean()) if vis_px.any() else None
        out[f"{prefix}infrared_weight"] = float(w_ir[ir_px].mean()) if ir_px.any() else None
        out[f"{prefix}visible_weight"] = float(w_vis[vis_px].mean()) if vis_px.any() else None
        out[f"{prefix}min_source_weight"] = float(w.mean(dim=(0, 2, 3)).min())
    return out


@torch.no_grad()
def bounded_maxnorm_update(
    generator: nn.Module, grads: dict[str, torch.Tensor], lr: float, probe: torch.Tensor, max_change: float
) -> float:
    """The released G step ``θ −= s·lr·g/max|g|`` with ``s ≤ 1`` so that G's weights on ``probe`` move by at most
    ``max_change`` (mean absolute change over pixels and sources). Returns ``s``.

    Why: the max-normalised step is scale-free, so it moves G by the full learning rate however small the
    meta-gradient is — one step of 1e-2 moved the released LPN's mean weight from 0.50 to 0.33 and five steps
    saturated it (docs/experiments.md). Bounding the step in *output* space keeps each meta step a small change of
    the loss whatever the learning rate, and leaves the released update untouched when the bound is not reached.
    The step is linearised once (``s = max_change / change of the full step``), which is accurate for the small
    changes it allows.
    """
    from tdfusion_core.kernel.meta import apply_maxnorm_update

    with eval_mode(generator):
        before = generator(probe)
        saved = {n: p.detach().clone() for n, p in generator.named_parameters() if n in grads}
        apply_maxnorm_update(generator, grads, lr)
        change = float((generator(probe) - before).abs().mean())
        if change <= max_change or change == 0.0:
            return 1.0
        scale = max_change / change
        for name, p in generator.named_parameters():
            if name in saved:
                p.copy_(saved[name])
        apply_maxnorm_update(generator, grads, lr * scale)
        return scale


def weight_map_signal(
    step: Any, sources: torch.Tensor, mts_task: Any, result: Any, weights: torch.Tensor, inner_lr: float
) -> torch.Tensor:
    """The meta-gradient with respect to G's weight map ``W`` on ``sources``: ``∂Lt(T'(F'(x_mts)))/∂W`` per pixel.

    ``step`` is the :class:`~tdfusion_core.kernel.meta.MetaStep` whose F (at θF, unchanged by the step) and task were used,
    ``result`` its :class:`~tdfusion_core.kernel.meta.MetaStepResult` (θF' and θT'), ``sources`` the meta-train sources
    the fusion loss saw and ``weights`` G's weights on them. With ``v = ∂Lt/∂θF'`` (Eq. 6) and the meta step's own
    identity (Eq. 7) the map is ``−η ∂/∂W ⟨∂Lf/∂If(W), J_F v⟩``; G's gradient is this map pulled back through G.
    For the reference intensity loss at ``w = ½`` the infrared-minus-visible part is proportional to
    ``(I_ir − I_vis)·J_F v``: the meta step raises the weight of the source lying on the side the task wants the
    fused pixel to move to (``−J_F v``), so G can learn only what the task's gradient on the fused image says.
    Returns ``(B, K, H, W)``; gradient descent on G moves ``W`` along minus this map.
    """
    from torch.func import jvp

    F = step.fusion_net
    theta_f = {n: p.detach() for n, p in F.named_parameters() if p.requires_grad}
    leaves = {n: p.detach().clone().requires_grad_(True) for n, p in result.fusion_params.items()}
    lt = step._task_loss(step._fuse(leaves, mts_task.sources), mts_task, result.task_params)
    grads = torch.autograd.grad(lt, list(leaves.values()), allow_unused=True)
    v = {n: (g if g is not None else torch.zeros_like(leaves[n])) for n, g in zip(leaves, grads)}
    fused, jv = jvp(lambda p: step._fuse(p, sources), (theta_f,), (v,))  # type: ignore[misc]
    w = weights.detach().requires_grad_(True)
    dlf_dfused = step._intensity_grad(fused.detach(), sources, w)
    (grad_w,) = torch.autograd.grad((dlf_dfused * jv.detach()).sum(), w)
    return -inner_lr * grad_w


def signal_by_region(
    signal: torch.Tensor, only: torch.Tensor, infrared: int = 0, visible: int = 1
) -> dict[str, dict[str, float | None]]:
    """Summarise a :func:`weight_map_signal` on the infrared-only (``only == 1``), visible-only (2) and other pixels.

    ``push`` = ``−(s_ir − s_vis)``: how a gradient step moves the infrared weight relative to the visible one
    (> 0: towards infrared). Per region: ``right`` the fraction of pixels pushed towards the source that shows
    them (infrared on infrared-only, visible on visible-only; on other pixels the fraction pushed towards
    infrared), ``net`` ``Σ push·sign / Σ|push|`` with the same sign (1: all of the push goes the right way, −1: all
    the wrong way) and ``scale`` the mean ``|push|``. ``None`` where a region has no pixels.
    """
    push = -(signal[:, infrared] - signal[:, visible])
    out: dict[str, dict[str, float | None]] = {}
    for name, mask, sign in (
        ("infrared_only", only == 1, 1.0),
        ("visible_only", only == 2, -1.0),
        ("other", only == 0, 1.0),
    ):
        p = push[mask] * sign
        if p.numel() == 0:
            out[name] = {"right": None, "net": None, "scale": None}
            continue
        total = float(p.abs().sum())
        out[name] = {
            "right": float((p > 0).float().mean()),
            "net": float(p.sum()) / total if total > 0 else 0.0,
            "scale": float(p.abs().mean()),
        }
    return out
