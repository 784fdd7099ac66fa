import copy
from typing import ClassVar

import pytest
import torch

from tdfusion_core.kernel.task import functional_task_loss
from tdfusion_core.plugin.registry import get_task
from tdfusion_core.tasks.tiny_seg import TinySegTask


@pytest.fixture
def seg_task():
    torch.manual_seed(0)
    # RGB input (an option; tiny-seg's default is the luminance): these contract checks use 3-channel images
    return get_task("tiny-seg", num_classes=3, width=8, input_kind="rgb")


def _data():
    images = torch.rand(2, 3, 16, 20, requires_grad=True)  # the fixture asks for RGB
    targets = torch.randint(0, 3, (2, 16, 20))
    return images, targets


def test_loss_is_scalar_and_differentiable_to_images(seg_task):
    images, targets = _data()
    loss = functional_task_loss(seg_task, images, targets)
    assert loss.dim() == 0 and torch.isfinite(loss)
    (grad,) = torch.autograd.grad(loss, images)
    assert grad.abs().sum() > 0


def test_substituted_parameters_change_loss_without_mutating_network(seg_task):
    images, targets = _data()
    net = seg_task.network
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    params = {k: v.detach() + 0.05 * torch.randn_like(v) for k, v in net.named_parameters()}
    net.eval()  # no BatchNorm statistics updates, so the comparison is exact
    base = functional_task_loss(seg_task, images, targets)
    moved = functional_task_loss(seg_task, images, targets, params=params)
    assert not torch.allclose(base, moved)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    # the substitution is exactly the same as loading those parameters
    net.load_state_dict({**before, **params})
    assert torch.allclose(functional_task_loss(seg_task, images, targets), moved)


def test_gradient_flows_to_substituted_parameters(seg_task):
    images, targets = _data()
    params = {
        k: (v.detach() + 0.05 * torch.randn_like(v)).requires_grad_(True)
        for k, v in seg_task.network.named_parameters()
    }
    loss = functional_task_loss(seg_task, images, targets, params=params)
    grads = torch.autograd.grad(loss, list(params.values()))
    # the same gradients as a plain backward through a copy of the network holding those parameters
    reference = copy.deepcopy(seg_task.network)
    reference.load_state_dict({k: v.detach() for k, v in params.items()}, strict=False)
    seg_task.compute_loss(reference, images.detach(), targets).backward()
    for (name, p), g in zip(reference.named_parameters(), grads):
        assert g.abs().sum() > 0, name
        assert torch.allclose(g, p.grad, atol=1e-7), name


def test_evaluate_returns_named_metrics_and_restores_mode(seg_task):
    images, targets = _data()
    net = seg_task.network.train()
    metrics = seg_task.evaluate(net, [(images.detach(), targets)])
    assert net.training
    assert 0.0 <= metrics["mIoU"] <= 1.0 and 0.0 <= metrics["mAcc"] <= 1.0


def test_mask_target_ops_follow_images(seg_task):
    mask = torch.arange(12).reshape(3, 4)
    assert seg_task.resize_targets(mask, (3, 4), (6, 8)).shape == (6, 8)
    assert torch.equal(seg_task.resize_targets(mask, (3, 4), (6, 8))[::2, ::2], mask)


def test_missing_checkpoint_names_the_path(tmp_path):
    task = get_task("tiny-seg", checkpoint=tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        _ = task.network


def test_checkpoint_round_trip(tmp_path, seg_task):
    path = tmp_path / "t.pt"
    torch.save(seg_task.network.state_dict(), path)
    other = get_task("tiny-seg", num_classes=3, width=8, input_kind="rgb", checkpoint=path)
    for (k, a), (_, b) in zip(seg_task.network.state_dict().items(), other.network.state_dict().items()):
        assert torch.equal(a, b), k


class _ModeProbe(TinySegTask):
    """Records the network's mode while evaluating; raises when asked to."""

    seen: ClassVar[list[bool]] = []

    def evaluate(self, network, batches):
        self.seen.append(network.training)
        if self.config.get("fail"):
            raise RuntimeError("evaluation failed")
        return {"n": float(len(list(batches)))}


def test_core_runs_every_tasks_evaluate_in_eval_mode_and_restores_the_mode():
    probe = _ModeProbe(num_classes=3, width=4)
    net = probe.network.train()
    assert probe.evaluate(net, [1, 2]) == {"n": 2.0}
    assert probe.seen == [False] and net.training
    net.eval()
    probe.evaluate(net, [])
    assert not net.training  # a network in eval mode stays there
    failing = _ModeProbe(num_classes=3, width=4, fail=True)
    net = failing.network.train()
    with pytest.raises(RuntimeError, match="evaluation failed"):
        failing.evaluate(net, [])
    assert net.training


def test_task_target_ops_are_the_table():
    from tdfusion_core.data import targets as target_ops

    mask = torch.arange(12).reshape(3, 4)
    boxes = torch.tensor([[1.0, 0.5, 0.5, 2.5, 2.0]])
    for kind, target in (("mask", mask), ("boxes", boxes)):
        task = TinySegTask(num_classes=3)
        task.target_kind = kind  # type: ignore[misc]
        expected = target_ops.apply("resize", kind, target, (3, 4), (6, 8))
        assert not torch.equal(expected, target) and torch.equal(task.resize_targets(target, (3, 4), (6, 8)), expected)
    assert target_ops.apply("resize", "none", None, (3, 4), (6, 8)) is None
