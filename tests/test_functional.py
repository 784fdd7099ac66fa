"""Parameter substitution that survives shared (aliased) submodules, unlike torch.func.functional_call."""

import pytest
import torch
import torch.nn as nn
from torch.func import jvp

from tdfusion_core.kernel.functional import call_with_parameters


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.levels = nn.ModuleList([self.conv, self.conv])  # the same module under two more names

    def forward(self, x):
        return sum(m(x) for m in self.levels) * self.conv(x)


def test_module_is_restored_and_output_matches_loading():
    net = Shared().double()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    params = {k: v.detach() + 0.5 for k, v in net.named_parameters()}
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    out = call_with_parameters(net, params, (x,))
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    net.load_state_dict(params, strict=False)
    assert torch.allclose(out, net(x))


def test_gradients_and_jvp_flow_through_substitutes():
    net = Shared().double()
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()}
    grads = torch.autograd.grad(call_with_parameters(net, params, (x,)).sum(), list(params.values()))
    tangents = {k: torch.ones_like(v) for k, v in params.items()}
    primals = {k: v.detach() for k, v in params.items()}
    _, jv = jvp(lambda p: call_with_parameters(net, p, (x,)).sum(), (primals,), (tangents,))
    assert torch.allclose(jv, sum(g.sum() for g in grads))  # <grad, 1> = J·1


def test_unknown_name_is_reported_and_nothing_left_swapped():
    net = Shared()
    before = net.conv.weight
    with pytest.raises(KeyError, match="nope"):
        call_with_parameters(
            net, {"conv.weight": torch.zeros(1, 1, 3, 3), "nope": torch.zeros(1)}, (torch.zeros(1, 1, 2, 2),)
        )
    assert net.conv.weight is before


class Tied(nn.Module):
    """Two distinct modules holding one weight tensor (tied weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 1, 3, padding=1)
        self.b = nn.Conv2d(1, 1, 3, padding=1)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(self.a(x))


def test_tied_weights_in_distinct_modules_are_substituted_together():
    net = Tied().double()
    x = torch.rand(1, 1, 5, 5, dtype=torch.float64)
    params = {k: v.detach() * 2 for k, v in net.named_parameters()}
    assert "b.weight" not in params  # named_parameters() lists a tied tensor once
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = call_with_parameters(net, params, (x,))
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    with torch.no_grad():
        net.a.weight.mul_(2)
        net.a.bias.mul_(2)
        net.b.bias.mul_(2)
    assert torch.allclose(out, net(x))
