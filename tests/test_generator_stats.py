"""G's statistics (entropy, mean weight per source, both orders), the saturation warning, the bounded G step."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from tdfusion_core.kernel.meta import apply_maxnorm_update
from tdfusion_core.nets.lpn import LossGenerator
from tdfusion_core.training.generator_stats import (
    SaturationGuard,
    bounded_maxnorm_update,
    generator_stats,
    weight_stats,
)
from tests.torch_threads import one_torch_thread  # noqa: F401


def test_weight_stats_of_known_weights():
    uniform = torch.full((2, 2, 4, 4), 0.5)
    s = weight_stats(uniform)
    assert s["entropy"] == pytest.approx(1.0) and s["max_weight"] == 0.5 and s["weight/source0"] == 0.5
    w = torch.zeros(1, 2, 2, 2)
    w[:, 0], w[:, 1] = 0.9, 0.1
    s = weight_stats(w)
    assert s["entropy"] == pytest.approx(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2), rel=1e-5)
    assert s["max_weight"] == pytest.approx(0.9) and s["weight/source1"] == pytest.approx(0.1)


class _First(torch.nn.Module):
    def forward(self, x):
        w = torch.full_like(x, 0.2)
        w[:, 0] = 0.8
        return w


def test_generator_stats_in_both_orders_expose_a_position_preference():
    s = generator_stats(_First(), torch.rand(1, 2, 5, 5))
    assert s["g/weight/source0"] == pytest.approx(0.8) and s["g/swapped/weight/source0"] == pytest.approx(0.2)
    assert s["g/order_gap"] == pytest.approx(0.6)


def test_saturation_warns_once():
    guard = SaturationGuard(0.98)
    assert not guard.check({"g/max_weight": 0.9, "g/swapped/max_weight": 0.97})
    with pytest.warns(RuntimeWarning, match="saturated at meta step 7: mean max-weight 0.990"):
        assert guard.check({"g/max_weight": 0.9, "g/swapped/max_weight": 0.99}, step=7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert guard.check({"g/max_weight": 0.995})  # still saturated, no second warning


def _push_to_source0(g: LossGenerator, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradient of −mean(w_0): the direction that makes G weight source 0 everywhere."""
    g.zero_grad()
    (-g(x)[:, 0].mean()).backward()
    return {n: p.grad.clone() for n, p in g.named_parameters() if p.grad is not None}


def _twin_generators(seed: int) -> tuple[LossGenerator, LossGenerator]:
    """Two small LPNs with equal weights (the first drawn after ``torch.manual_seed(seed)``, the second copies it)."""
    torch.manual_seed(seed)
    first = LossGenerator(2, dim=8, num_blocks=1, heads=2)
    second = LossGenerator(2, dim=8, num_blocks=1, heads=2)
    second.load_state_dict(first.state_dict())
    return first, second


def test_bounded_step_keeps_g_from_collapsing_where_the_released_step_saturates():
    x = torch.rand(2, 2, 12, 12)
    released, bounded = _twin_generators(seed=0)
    start = float(bounded(x)[:, 0].mean().detach())
    for _ in range(15):
        apply_maxnorm_update(released, _push_to_source0(released, x), lr=0.05)
        before = bounded(x).detach()
        scale = bounded_maxnorm_update(bounded, _push_to_source0(bounded, x), 0.05, x, max_change=0.01)
        assert 0 < scale <= 1
        assert float((bounded(x) - before).abs().mean()) <= 0.0125  # the bound holds (linearised once)
    assert weight_stats(released(x).detach())["max_weight"] > 0.98  # the same push saturates the released step
    moved = float(bounded(x)[:, 0].mean().detach()) - start
    assert 0.05 < moved <= 15 * 0.0125  # it still learns, at a bounded pace (two sources: |Δw_0| = mean |Δw|)


def test_bounded_step_equals_the_released_step_below_the_bound():
    x = torch.rand(1, 2, 8, 8)
    a, b = _twin_generators(seed=1)
    grads = _push_to_source0(a, x)
    apply_maxnorm_update(a, grads, 1e-5)
    assert bounded_maxnorm_update(b, grads, 1e-5, x, max_change=0.5) == 1.0
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n


def test_weight_map_signal_is_the_outer_gradient_with_respect_to_the_weight_map():
    """Against autograd through the inner update itself (float64): W a leaf, θF' = θF − η∇θF Lf(W), ∂Lt/∂W."""
    from tdfusion_core.kernel.meta import sgd_task_step
    from tdfusion_core.kernel.task import functional_task_loss
    from tdfusion_core.training.generator_stats import weight_map_signal
    from tests.test_meta import _setup

    step, crop, mtr, mts = _setup(seed=3)
    lr = 0.5
    result = step.compute(crop, mtr, mts, lr, sgd_task_step(0.1))
    weights = step.loss_generator(crop).detach()
    signal = weight_map_signal(step, crop, mts, result, weights, lr)

    F = step.fusion_net
    w = weights.clone().requires_grad_(True)
    theta = {n: p.detach().requires_grad_(True) for n, p in F.named_parameters()}
    lf = step.fusion_loss(torch.func.functional_call(F, theta, (crop,)), crop, w)
    grads = torch.autograd.grad(lf, list(theta.values()), create_graph=True)
    theta1 = {n: p - lr * g for (n, p), g in zip(theta.items(), grads)}
    fused = torch.func.functional_call(F, theta1, (mts.sources,))
    lt = functional_task_loss(step.task, fused, mts.targets, params=result.task_params)
    (expected,) = torch.autograd.grad(lt, w)
    assert expected.abs().max() > 0
    assert (signal - expected).norm() / expected.norm() < 1e-10


def test_signal_by_region_counts_pushes_towards_the_source_that_shows_a_region():
    from tdfusion_core.training.generator_stats import signal_by_region

    only = torch.tensor([[[1, 1, 2, 2, 0]]])
    signal = torch.zeros(1, 2, 1, 5)
    # a descent step moves W along −signal: −(s_ir − s_vis) > 0 pushes towards infrared
    signal[0, 0, 0] = torch.tensor([-2.0, 1.0, 1.0, 1.0, -1.0])
    out = signal_by_region(signal, only)
    assert out["infrared_only"] == {"right": 0.5, "net": pytest.approx(1 / 3), "scale": 1.5}
    assert out["visible_only"] == {"right": 1.0, "net": 1.0, "scale": 1.0}
    assert out["other"]["right"] == 1.0
    assert signal_by_region(signal, torch.zeros(1, 1, 5, dtype=torch.long))["visible_only"]["right"] is None
