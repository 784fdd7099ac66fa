"""ReFusion's linearized pass (:mod:`tdfusion_core.nets.refusion_tangent`): its tangent map equals ``torch.func.jvp``
of the layers (float64), and the meta step that uses it computes the same G gradient as the other exact modes."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, jvp

from tdfusion_core.kernel.losses import FusionLoss
from tdfusion_core.kernel.meta import MetaStep, TaskInput, sgd_task_step
from tdfusion_core.nets.lpn import LossGenerator
from tdfusion_core.nets.refusion import FusionNet
from tdfusion_core.nets.refusion_tangent import linearize
from tdfusion_core.nets.training_passes import use_fast_pass
from tdfusion_core.plugin.registry import get_task
from tests.test_refusion_fast import random_net
from tests.torch_threads import one_torch_thread  # noqa: F401


def _net(bias: bool = False, num_sources: int = 2) -> FusionNet:
    return random_net(num_sources, bias)


def _layers_jvp(net: FusionNet, x: torch.Tensor, params: dict, tangents: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: forward-mode AD through the network's own layers (no fast pass)."""
    assert net.forward_pass is None
    return jvp(lambda p: functional_call(net, p, (x,)), (params,), (tangents,))  # type: ignore[return-value]


@pytest.mark.parametrize("bias", [False, True])
def test_tangent_map_equals_forward_mode_ad_of_the_layers(bias):
    net = _net(bias)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 2, 11, 14, dtype=torch.float64, generator=gen)
    params = {n: p.detach() for n, p in net.named_parameters()}
    tangents = {n: torch.randn(p.shape, dtype=p.dtype, generator=gen) for n, p in params.items()}
    primal, expected = _layers_jvp(net, x, params, tangents)

    out, tangent = linearize(net, x)
    assert (out - primal).abs().max() < 1e-12
    got = tangent(tangents)
    assert got.shape == expected.shape and expected.abs().max() > 1e-2
    assert (got - expected).abs().max() < 1e-11 * float(expected.abs().max())

    # one parameter at a time: a missing name is a zero tangent, and every layer's own term is right
    for name in ("FM.temperature1", "decoder.1.ffn.dwconv.weight", "encoder2.0.norm1.body.bias", "project_in_1.weight"):
        one = {name: tangents[name]}
        _, expected_one = _layers_jvp(net, x, params, {n: one.get(n, torch.zeros_like(p)) for n, p in params.items()})
        assert expected_one.abs().max() > 0, name
        assert (tangent(one) - expected_one).abs().max() < 1e-11 * max(1.0, float(expected_one.abs().max())), name


def test_the_map_keeps_the_point_of_its_call():
    """Parameters that change after the recorded forward (F's update) do not move the point of the derivative."""
    net = _net()
    x = torch.rand(1, 2, 9, 10, dtype=torch.float64)
    params = {n: p.detach().clone() for n, p in net.named_parameters()}
    tangents = {n: torch.ones_like(p) for n, p in params.items()}
    _, tangent = linearize(net, x)
    _, expected = _layers_jvp(net, x, params, tangents)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1.5)
    assert (tangent(tangents) - expected).abs().max() < 1e-11 * float(expected.abs().max())


def test_only_two_source_refusion_is_linearized():
    with pytest.raises(ValueError, match="two-source"):
        linearize(_net(num_sources=3), torch.rand(1, 3, 8, 8, dtype=torch.float64))
    three = _net(num_sources=3)
    use_fast_pass(three)
    assert three.linearized_pass is None and three.forward_pass is not None
    two = _net()
    use_fast_pass(two)
    assert two.linearized_pass is linearize
    use_fast_pass(two, enabled=False)
    assert two.linearized_pass is None


def _meta_setup():
    torch.manual_seed(0)
    fusion, generator = _net(), LossGenerator(dim=4, num_blocks=1, heads=2).double()
    task = get_task("tiny-seg", num_classes=3, width=4)
    task.network.double()
    crop = torch.rand(2, 2, 10, 12, dtype=torch.float64)

    def batch() -> TaskInput:
        return TaskInput(
            torch.rand(2, 2, 12, 12, dtype=torch.float64),
            torch.rand(2, 2, 2, 12, 12, dtype=torch.float64),
            torch.randint(0, 3, (2, 12, 12)),
        )

    return MetaStep(fusion, generator, task, FusionLoss()), crop, batch(), batch()


def test_meta_step_through_the_linearized_pass_equals_jvp_and_double_backward():
    step, crop, mtr, mts = _meta_setup()

    def grad_g(mode: str, fast: bool) -> torch.Tensor:
        use_fast_pass(step.fusion_net, fast)
        step.mode = mode  # type: ignore[assignment]
        calls = []
        if fast:
            original = step.fusion_net.linearized_pass
            assert original is linearize

            def counted(net, x):
                calls.append(x.shape)
                return original(net, x)

            step.fusion_net.linearized_pass = counted
        result = step.compute(crop, mtr, mts, 0.5, sgd_task_step(0.1))
        assert len(calls) == (1 if fast and mode == "jvp" else 0)
        return torch.cat([g.reshape(-1) for g in result.grad_g.values()])

    linearized = grad_g("jvp", fast=True)
    plain_jvp = grad_g("jvp", fast=False)
    double_backward = grad_g("double-backward", fast=False)
    assert linearized.abs().max() > 0
    assert (linearized - plain_jvp).norm() / plain_jvp.norm() < 1e-10
    assert (linearized - double_backward).norm() / double_backward.norm() < 1e-10
