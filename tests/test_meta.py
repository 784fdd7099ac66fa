"""The meta-gradient of G: the three modes against each other and against central finite differences (float64)."""

import copy

import pytest
import torch
import torch.nn as nn
from torch.func import functional_call

from tdfusion_core.kernel.losses import FusionLoss
from tdfusion_core.kernel.meta import (
    MetaStep,
    OptimizerTaskStep,
    TaskInput,
    adam_task_step,
    apply_maxnorm_update,
    detached_params,
    sgd_task_step,
    task_step_rule,
)
from tdfusion_core.kernel.task import functional_task_loss
from tdfusion_core.plugin.registry import get_task


class TinyFusion(nn.Module):
    def __init__(self, k: int = 2) -> None:
        super().__init__()
        self.a = nn.Conv2d(k, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, x):
        return torch.sigmoid(self.b(torch.tanh(self.a(x))))


class TinyGenerator(nn.Module):
    def __init__(self, k: int = 2) -> None:
        super().__init__()
        self.c = nn.Conv2d(k, k, 3, padding=1)

    def forward(self, x):
        return torch.softmax(self.c(x), dim=1)


def _setup(seed: int = 0, intensity: str = "reference"):
    torch.manual_seed(seed)
    F, G = TinyFusion().double(), TinyGenerator().double()
    task = get_task("tiny-seg", num_classes=3, width=4)
    task.network.double()
    crop = torch.rand(2, 2, 12, 12, dtype=torch.float64)

    def task_batch():
        return TaskInput(
            torch.rand(2, 2, 16, 16, dtype=torch.float64),
            torch.rand(2, 2, 2, 16, 16, dtype=torch.float64),
            torch.randint(0, 3, (2, 16, 16)),
        )

    step = MetaStep(F, G, task, FusionLoss(intensity=intensity, alpha=1.0))
    return step, crop, task_batch(), task_batch()


def _grad(step, crop, mtr, mts, mode, lr=0.5):
    step.mode = mode
    return step.compute(crop, mtr, mts, lr, sgd_task_step(0.1))


def _flat(grads):
    return torch.cat([g.reshape(-1) for g in grads.values()])


@pytest.mark.parametrize("intensity", ["reference", "paper"])
def test_jvp_equals_double_backward(intensity):
    step, crop, mtr, mts = _setup(intensity=intensity)
    a = _flat(_grad(step, crop, mtr, mts, "jvp").grad_g)
    b = _flat(_grad(step, crop, mtr, mts, "double-backward").grad_g)
    assert a.abs().max() > 0
    assert (a - b).norm() / b.norm() < 1e-10


def _outer_objective(step, crop, mts, theta_g, theta_t1, lr):
    """θG -> Lt(T'(F'(θG)))(x_mts) with T' fixed, computed independently of MetaStep."""
    F, G = step.fusion_net, step.loss_generator
    theta_f = {n: p.detach().requires_grad_(True) for n, p in F.named_parameters()}
    w = functional_call(G, theta_g, (crop,))
    lf = step.fusion_loss(functional_call(F, theta_f, (crop,)), crop, w)
    grads = torch.autograd.grad(lf, list(theta_f.values()))
    theta_f1 = {n: p.detach() - lr * g for (n, p), g in zip(theta_f.items(), grads)}
    from tdfusion_core.common.colour import task_input

    fused = functional_call(F, theta_f1, (mts.sources,))
    return functional_task_loss(
        step.task, task_input(fused, mts.chroma, step.task.input_kind), mts.targets, params=theta_t1
    )


@pytest.mark.parametrize("mode", ["jvp", "double-backward"])
def test_meta_gradient_matches_central_finite_differences(mode):
    step, crop, mtr, mts = _setup(seed=1)
    lr = 0.5
    result = _grad(step, crop, mtr, mts, mode, lr)
    theta_g = detached_params(step.loss_generator)
    torch.manual_seed(3)
    for _ in range(3):
        d = {n: torch.randn_like(p) for n, p in theta_g.items()}
        h = 1e-5
        plus = _outer_objective(step, crop, mts, {n: p + h * d[n] for n, p in theta_g.items()}, result.task_params, lr)
        minus = _outer_objective(step, crop, mts, {n: p - h * d[n] for n, p in theta_g.items()}, result.task_params, lr)
        fd = float(plus - minus) / (2 * h)
        analytic = float(sum((result.grad_g[n] * d[n]).sum() for n in d))
        assert analytic == pytest.approx(fd, rel=1e-5)


def test_finite_difference_mode_approximates_exact():
    step, crop, mtr, mts = _setup(seed=2)
    exact = _flat(_grad(step, crop, mtr, mts, "jvp").grad_g)
    approx = _flat(_grad(step, crop, mtr, mts, "finite-difference").grad_g)
    assert (approx - exact).norm() / exact.norm() < 1e-3


def test_meta_step_mutates_nothing():
    step, crop, mtr, mts = _setup(seed=4)
    modules = (step.fusion_net, step.loss_generator, step.task.network)
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]
    for mode in ("jvp", "double-backward", "finite-difference"):
        _grad(step, crop, mtr, mts, mode)
    for m, state in zip(modules, before):
        for k, v in m.state_dict().items():
            assert torch.equal(v, state[k]), k  # BatchNorm running statistics included


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: torch.optim.Adam(ps, lr=0.01),
        lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1, amsgrad=True),
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
        lambda ps: torch.optim.RMSprop(ps, lr=0.01),
    ],
)
def test_optimizer_task_step_is_one_real_step_then_restores_the_weights(make):
    """The released T' rule for any optimizer: θT' = the weights after one real step, whose state advances;
    the module's weights (and .grad) are put back."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1)).double()
    twin = copy.deepcopy(net)
    opt, twin_opt = make(net.parameters()), make(twin.parameters())
    rule = OptimizerTaskStep(opt, net)
    assert rule.advances_state
    for _ in range(3):
        grads = {n: torch.randn_like(p) for n, p in net.named_parameters()}
        before = {n: p.detach().clone() for n, p in net.named_parameters()}
        stepped = rule(detached_params(net), grads)
        for n, p in twin.named_parameters():  # the plain torch way: set .grad, step, read
            p.grad = grads[n].clone()
        twin_opt.step()
        for n, p in twin.named_parameters():
            assert torch.equal(stepped[n], p.detach()), n
            with torch.no_grad():
                p.copy_(before[n])  # the released code reloads T's weights, not the optimizer
        for n, p in net.named_parameters():
            assert torch.equal(p.detach(), before[n]) and p.grad is None, n
    for p, q in zip(net.parameters(), twin.parameters()):
        ours, theirs = opt.state[p], twin_opt.state[q]
        assert ours and ours.keys() == theirs.keys()
        for key in ours:
            assert torch.equal(torch.as_tensor(ours[key]), torch.as_tensor(theirs[key])), key


def test_task_step_rules_by_name():
    net = nn.Linear(2, 1)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    assert isinstance(task_step_rule("adam", opt, net), OptimizerTaskStep)
    assert not getattr(task_step_rule("adam-readonly", opt, net), "advances_state", False)
    assert not getattr(task_step_rule("sgd", opt, net), "advances_state", False)
    with pytest.raises(ValueError, match="task_step must be one of"):
        task_step_rule("lion", opt, net)


def test_functional_adam_step_equals_torch_adam():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1)).double()
    opt = torch.optim.Adam(net.parameters(), lr=0.01, weight_decay=0.1)
    for _ in range(2):  # build some optimizer state first
        opt.zero_grad()
        net(torch.randn(5, 3, dtype=torch.float64)).pow(2).mean().backward()
        opt.step()
    grads = {n: torch.randn_like(p) for n, p in net.named_parameters()}
    state_before = {
        id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()} for p, s in opt.state.items()
    }
    params_before = {n: p.detach().clone() for n, p in net.named_parameters()}
    predicted = adam_task_step(opt, net)(detached_params(net), grads)
    # the functional step read the optimizer's state and the parameters without changing them
    assert len(state_before) == len(list(net.parameters()))
    for p, s in opt.state.items():
        assert set(s) == set(state_before[id(p)])
        for k, v in s.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(state_before[id(p)][k])), k
    for n, p in net.named_parameters():
        assert torch.equal(p.detach(), params_before[n]), n
    for n, p in net.named_parameters():
        p.grad = grads[n].clone()
    opt.step()
    for n, p in net.named_parameters():
        assert torch.allclose(predicted[n], p.detach(), atol=1e-14), n


def test_maxnorm_update():
    G = TinyGenerator().double()
    before = detached_params(G)
    before = {n: p.clone() for n, p in before.items()}
    grads = {n: torch.full_like(p, 2.0) for n, p in before.items()}
    grads["c.bias"] = torch.full_like(before["c.bias"], -4.0)
    apply_maxnorm_update(G, grads, lr=0.1)
    after = detached_params(G)
    assert torch.allclose(after["c.weight"], before["c.weight"] - 0.05)
    assert torch.allclose(after["c.bias"], before["c.bias"] + 0.1)


def test_frozen_parameters_are_left_out_of_the_step():
    step, crop, mtr, mts = _setup(seed=5)
    frozen = step.task.network.head.bias
    frozen.requires_grad_(False)
    result = _grad(step, crop, mtr, mts, "jvp")
    assert "head.bias" not in result.task_params and "head.weight" in result.task_params
    assert result.finite
