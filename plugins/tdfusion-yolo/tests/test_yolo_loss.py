"""The task loss: ultralytics' own v8 detection loss, gains, reduction, padding, and gradients to the images."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as nnf
from tdfusion_yolo.targets import to_ultralytics_batch
from tdfusion_yolo.task import PAD_VALUE, YoloTask
from yolo_testutils import load_pairs


@pytest.fixture(scope="module")
def llvip():
    return load_pairs("LLVIP", "train", count=2)


def _task(base_task, **config) -> YoloTask:
    task = YoloTask(input_kind="rgb", num_classes=1, **config)
    task.network = base_task.network
    return task


def test_loss_matches_ultralytics_model_loss(base_task, llvip):
    images, boxes = llvip
    net = copy.deepcopy(base_task.network).eval()  # eval: no BatchNorm update, both passes see the same weights
    ours = _task(base_task).compute_loss(net, images, boxes)
    batch = {"img": images, **to_ultralytics_batch(boxes, 2, *images.shape[-2:])}
    theirs, items = net.loss(batch)  # ultralytics' own entry point (it caches a criterion on the model)
    assert ours.dim() == 0 and torch.isfinite(ours)
    torch.testing.assert_close(ours, theirs.sum() / 2)
    torch.testing.assert_close(
        _task(base_task, loss_reduction="ultralytics").compute_loss(net, images, boxes), theirs.sum()
    )
    assert set(items) == {"box_loss", "cls_loss", "dfl_loss"}


def test_gains_weight_the_three_terms(base_task, llvip):
    images, boxes = llvip
    net = base_task.network.eval()
    total = _task(base_task, box=2.0, cls=3.0, dfl=4.0).compute_loss(net, images, boxes)
    parts = [
        _task(base_task, box=1.0, cls=0.0, dfl=0.0).compute_loss(net, images, boxes),
        _task(base_task, box=0.0, cls=1.0, dfl=0.0).compute_loss(net, images, boxes),
        _task(base_task, box=0.0, cls=0.0, dfl=1.0).compute_loss(net, images, boxes),
    ]
    assert all(p > 0 for p in parts)
    torch.testing.assert_close(total, 2 * parts[0] + 3 * parts[1] + 4 * parts[2])
    items = _task(base_task, box=2.0, cls=3.0, dfl=4.0).loss_items(net, images, boxes)
    torch.testing.assert_close(torch.tensor(sum(items.values())), total.detach())
    assert _task(base_task, box=0.0, cls=0.0, dfl=0.0).compute_loss(net, images, boxes) == 0
    assert getattr(net, "criterion", None) is None  # nothing cached on the model by compute_loss


def test_gradient_to_the_images_matches_finite_differences(base_task):
    """d loss / d images along a random direction, float64, against a central difference (BatchNorm in eval)."""
    task = _task(base_task)
    net = copy.deepcopy(base_task.network).double().eval()
    torch.manual_seed(1)
    images = torch.rand(1, 3, 64, 96, dtype=torch.float64, requires_grad=True)
    boxes = [torch.tensor([[0.0, 10, 8, 40, 56], [0.0, 50, 20, 90, 60]])]
    loss = task.compute_loss(net, images, boxes)
    (grad,) = torch.autograd.grad(loss, images)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    direction = torch.randn_like(images)
    eps = 1e-3
    with torch.no_grad():
        plus = task.compute_loss(net, images + eps * direction, boxes)
        minus = task.compute_loss(net, images - eps * direction, boxes)
    numeric = (plus - minus) / (2 * eps)
    analytic = (grad * direction).sum()
    torch.testing.assert_close(analytic, numeric.to(analytic.dtype), rtol=2e-2, atol=1e-4)


def test_sizes_off_the_stride_are_padded_like_a_letterbox(base_task):
    task = _task(base_task)
    net = base_task.network.eval()
    images = torch.rand(2, 3, 70, 100, requires_grad=True)
    boxes = [torch.tensor([[0.0, 5, 5, 60, 50]]), torch.tensor([[0.0, 30, 10, 95, 69]])]
    loss = task.compute_loss(net, images, boxes)
    padded = nnf.pad(images.detach(), (0, 28, 0, 26), value=PAD_VALUE)  # to 96 x 128
    torch.testing.assert_close(loss, task.compute_loss(net, padded, boxes))
    (grad,) = torch.autograd.grad(loss, images)
    assert grad.shape == images.shape and grad.abs().sum() > 0


def test_images_without_boxes(base_task):
    task = _task(base_task)
    loss = task.compute_loss(base_task.network.eval(), torch.rand(2, 3, 64, 64), [torch.zeros(0, 5), None])
    assert torch.isfinite(loss) and loss > 0  # classification term against "background everywhere"


@pytest.mark.parametrize(("dataset", "nc"), [("LLVIP", 1), ("MSRS_det", 3)])
def test_real_pairs_give_a_loss_that_a_gradient_step_lowers(dataset, nc):
    """On real IR/visible scenes and their boxes: finite loss, gradients to images and weights, and a small step
    along the negative weight gradient lowers the loss (BatchNorm in eval, so only the weights change)."""
    torch.manual_seed(0)
    task = YoloTask(input_kind="rgb", num_classes=nc)
    net = task.network.eval()
    images, boxes = load_pairs(dataset, "train", count=2)
    assert max(int(b[:, 0].max()) for b in boxes) < nc and all(len(b) for b in boxes)
    images.requires_grad_(True)
    loss = task.compute_loss(net, images, boxes)
    params = [p for p in net.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [images, *params])
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
    assert grads[0].abs().sum() > 0
    norm = torch.sqrt(sum((g**2).sum() for g in grads[1:]))
    with torch.no_grad():
        for p, g in zip(params, grads[1:]):
            p.sub_(1e-3 * g / norm)
        after = task.compute_loss(net, images, boxes)
    assert after < loss.detach(), (float(after), float(loss))
