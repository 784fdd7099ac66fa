import copy

import pytest
import torch

from tdfusion_core.registry import get_task
from tdfusion_core.task import functional_task_loss


@pytest.fixture
def seg_task():
    torch.manual_seed(0)
    return get_task("tiny-seg", num_classes=3, width=8)


def _data():
    images = torch.rand(2, 1, 16, 20, requires_grad=True)  # tiny-seg takes the fused luminance
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
    assert torch.equal(seg_task.hflip_targets(mask, 4), mask.flip(-1))
    assert torch.equal(seg_task.crop_targets(mask, 1, 1, 2, 2), mask[1:3, 1:3])
    assert seg_task.resize_targets(mask, (3, 4), (6, 8)).shape == (6, 8)
    assert torch.equal(seg_task.resize_targets(mask, (3, 4), (6, 8))[::2, ::2], mask)


def test_missing_checkpoint_names_the_path(tmp_path):
    task = get_task("tiny-seg", checkpoint=tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        _ = task.network


def test_checkpoint_round_trip(tmp_path, seg_task):
    path = tmp_path / "t.pt"
    torch.save(seg_task.network.state_dict(), path)
    other = get_task("tiny-seg", num_classes=3, width=8, checkpoint=path)
    for (k, a), (_, b) in zip(seg_task.network.state_dict().items(), other.network.state_dict().items()):
        assert torch.equal(a, b), k
