"""T' through core's functional_task_loss: substituted parameters behave exactly like loaded ones, T is untouched."""

from __future__ import annotations

import copy

import pytest
import torch
from tdfusion_yolo.task import YoloTask
from yolo_testutils import load_pairs

from tdfusion_core.kernel.task import functional_task_loss


def _state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_one_sgd_step_applied_functionally_equals_loading_the_stepped_parameters(yolo_task):
    """Eq. 5 as the meta step does it: theta_T' = theta_T - lr * grad, evaluated with substituted parameters."""
    task, net = yolo_task, yolo_task.network
    images, boxes = load_pairs("LLVIP", "train", count=2, size=(96, 128))
    before = _state(net)

    net.train()  # as in the meta step: BatchNorm uses batch statistics (and updates its running ones)
    names, params = zip(*[(n, p) for n, p in net.named_parameters()])
    loss = functional_task_loss(task, images, boxes)
    grads = torch.autograd.grad(loss, params)
    stepped = {n: p.detach() - 0.05 * g for n, p, g in zip(names, params, grads)}

    x_mts = images.flip(-1).clone().requires_grad_(True)  # another batch for the outer loss
    boxes_mts = [torch.stack([b[:, 0], 128 - b[:, 3], b[:, 2], 128 - b[:, 1], b[:, 4]], 1) for b in boxes]
    net.load_state_dict(before)
    loss_fn = functional_task_loss(task, x_mts, boxes_mts, params=stepped)
    (grad_fn,) = torch.autograd.grad(loss_fn, x_mts)

    # T itself is unchanged by the functional evaluation (parameters; running statistics restored by hand here)
    for n, p in net.named_parameters():
        assert torch.equal(p, before[n]), n

    # the same loss and input gradient after really loading theta_T' into a copy (same running statistics)
    loaded = copy.deepcopy(net)
    loaded.load_state_dict({**before, **stepped})
    x_ref = x_mts.detach().clone().requires_grad_(True)
    loss_ref = task.compute_loss(loaded, x_ref, boxes_mts)
    (grad_ref,) = torch.autograd.grad(loss_ref, x_ref)
    torch.testing.assert_close(loss_fn, loss_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_fn, grad_ref, rtol=1e-4, atol=1e-8)
    # and it really differs from T's own loss there (the step did something)
    net.load_state_dict(before)
    assert not torch.allclose(functional_task_loss(task, x_mts, boxes_mts), loss_fn)


def test_gradient_reaches_substituted_parameters_and_no_state_is_cached(yolo_task):
    task, net = yolo_task, yolo_task.network.eval()
    images = torch.rand(1, 3, 64, 64)
    boxes = [torch.tensor([[0.0, 8, 8, 40, 50]])]
    # every parameter is trainable and on the loss path, in training mode too (where the Detect head skips its DFL
    # layer): core's meta step differentiates with respect to all of named_parameters() without allow_unused
    assert all(p.requires_grad for p in net.parameters())
    assert "model.22.dfl.conv.weight" in dict(net.named_buffers())  # ultralytics' frozen constant, now a buffer
    for mode in (True, False):
        net.train(mode)
        params = {n: p.detach().clone().requires_grad_(True) for n, p in net.named_parameters()}
        loss = functional_task_loss(task, images, boxes, params=params)
        grads = torch.autograd.grad(loss, list(params.values()))
        assert all(g.shape == p.shape and torch.isfinite(g).all() for g, p in zip(grads, params.values()))
        assert sum(bool(g.abs().sum() > 0) for g in grads) > 0.9 * len(grads)
    # the ultralytics model keeps no criterion (with its own references to tensors) between calls
    assert getattr(net, "criterion", None) is None


def test_loss_follows_the_network_across_device_and_dtype_changes(yolo_task):
    """Nothing is cached from a previous call: after .double() the loss runs in float64 without stale tensors."""
    task, net = yolo_task, yolo_task.network.eval()
    images = torch.rand(1, 3, 64, 64)
    boxes = [torch.tensor([[0.0, 8, 8, 40, 50]])]
    first = task.compute_loss(net, images, boxes)
    net.double()
    second = task.compute_loss(net, images.double(), boxes)
    torch.testing.assert_close(second.float(), first, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model", ["yolo11n.yaml", "yolov10n.yaml"])
def test_other_detection_yamls_work_functionally(model):
    """YOLO11 and YOLOv10 (end-to-end head: ultralytics' E2ELoss, both branches on the loss path) behave the same."""
    task = YoloTask(input_kind="rgb", num_classes=2, model=model)
    net = task.network.train()
    images = torch.rand(2, 3, 64, 96, requires_grad=True)
    boxes = [torch.tensor([[0.0, 10, 10, 50, 60]]), torch.tensor([[1.0, 40, 5, 90, 60]])]
    params = {n: p.detach().clone().requires_grad_(True) for n, p in net.named_parameters()}
    loss = functional_task_loss(task, images, boxes, params=params)
    grads = torch.autograd.grad(loss, [images, *params.values()])
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
    metrics = task.evaluate(net, [(images.detach(), boxes)])
    assert net.training and 0 <= metrics["mAP50:95"] <= 1
