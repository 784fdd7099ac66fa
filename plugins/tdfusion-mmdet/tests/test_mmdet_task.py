"""The ``mmdet`` task with RTMDet, YOLOX, RetinaNet and Faster R-CNN: offline build, loss, functional T', mAP."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from mmdet_testutils import DETECTORS

from tdfusion_core.kernel.task import functional_task_loss


def test_task_registered_by_the_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    from tdfusion_core.plugin import registry
    from tdfusion_core.plugin.manager import reset_plugin_manager

    monkeypatch.setenv("TDFUSION_LOAD_PLUGINS", "mmdet")
    reset_plugin_manager()
    try:
        assert registry.entries("task")["mmdet"][1] == "mmdet"
        task = registry.get_task("mmdet", num_classes=1)
        assert task.target_kind == "boxes" and task.input_kind == "rgb"
        assert task.config["config"] == "rtmdet/rtmdet_tiny_8xb32-300e_coco"  # the default
    finally:
        monkeypatch.undo()
        reset_plugin_manager()


@pytest.mark.parametrize("name", list(DETECTORS))
def test_detector_builds_offline(build_detector: Any, name: str) -> None:
    from tdfusion_mmdet.task import DetectorNetwork

    task = build_detector(name)
    net = task.network
    assert isinstance(net, DetectorNetwork)
    assert type(net.model).__name__ == DETECTORS[name]
    assert task.num_classes == 1
    head = net.model.roi_head.bbox_head if hasattr(net.model, "roi_head") else net.model.bbox_head
    assert head.num_classes == 1
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in net.modules())
    assert net.size_divisor >= 32
    # nothing frozen: no pretrained weights were loaded, so frozen_stages / norm_eval were released
    assert all(p.requires_grad for p in net.parameters())


def test_channel_order_and_normalisation_follow_each_config(build_detector: Any) -> None:
    images = torch.rand(1, 3, 64, 96)
    rtmdet = build_detector("rtmdet-tiny").network  # BGR, mean/std in BGR order
    bgr_mean = torch.tensor([103.53, 116.28, 123.675]).view(1, 3, 1, 1)
    bgr_std = torch.tensor([57.375, 57.12, 58.395]).view(1, 3, 1, 1)
    torch.testing.assert_close(rtmdet.prepare(images), (images.flip(1) * 255 - bgr_mean) / bgr_std)
    yolox = build_detector("yolox-tiny").network  # BGR in [0, 255], no normalisation
    torch.testing.assert_close(yolox.prepare(images), images.flip(1) * 255)
    retina = build_detector("retinanet-r50").network  # bgr_to_rgb=True: RGB
    rgb_mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    rgb_std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    torch.testing.assert_close(retina.prepare(images), (images * 255 - rgb_mean) / rgb_std)
    padded = retina.prepare(torch.rand(2, 3, 50, 70))
    assert padded.shape[-2:] == (64, 96) and torch.all(padded[..., 50:, :] == 0)


@pytest.mark.parametrize("name", list(DETECTORS))
def test_loss_reaches_input_and_functional_t_prime(build_detector: Any, det_batch: Any, name: str) -> None:
    task = build_detector(name)
    images, boxes = det_batch
    net = task.network.train()
    params = dict(net.named_parameters())
    before = {k: v.detach().clone() for k, v in params.items()}
    x = images.clone().requires_grad_(True)

    torch.manual_seed(1)  # Faster R-CNN samples RoIs at random
    loss = functional_task_loss(task, x, boxes)
    assert loss.dim() == 0 and torch.isfinite(loss)
    grads = torch.autograd.grad(loss, [x, *params.values()], allow_unused=True)
    assert torch.isfinite(grads[0]).all() and grads[0].abs().sum() > 0, "the loss must reach the fused image"
    stepped = {k: (p - 0.05 * g if g is not None else p).detach() for (k, p), g in zip(params.items(), grads[1:])}

    with torch.no_grad():
        torch.manual_seed(2)
        functional = functional_task_loss(task, images, boxes, params=stepped)
        for key, value in net.named_parameters():
            assert torch.equal(value, before[key]), f"{key} was modified by the functional call"
        try:  # load the stepped parameters into the network itself (no copy of an R50 detector), then restore
            for key, value in net.named_parameters():
                value.copy_(stepped[key])
            torch.manual_seed(2)
            reference = task.compute_loss(net, images, boxes)
        finally:
            for key, value in net.named_parameters():
                value.copy_(before[key])
    torch.testing.assert_close(functional, reference, rtol=1e-5, atol=1e-6)
    assert abs(float(functional) - float(loss.detach())) > 1e-5


@pytest.mark.parametrize("name", list(DETECTORS))
def test_evaluate_returns_map(build_detector: Any, det_batch: Any, name: str) -> None:
    task = build_detector(name)
    images, boxes = det_batch
    net = task.network.train()
    metrics = task.evaluate(net, [(images, boxes)])
    assert net.training
    for key in ("mAP50:95", "mAP50", "mAP75", "AP50:95.0", "AP50.0", "AP75.0"):
        assert key in metrics and 0.0 <= metrics[key] <= 1.0, (key, metrics.get(key))
    for det_boxes, scores, labels in net.eval()(images):
        assert det_boxes.shape[1] == 4 and scores.shape == labels.shape
        if len(det_boxes):
            assert det_boxes[:, 0::2].min() >= 0 and det_boxes[:, 0::2].max() <= 80
            assert det_boxes[:, 1::2].max() <= 64 and torch.all(labels == 0)
    net.train()


def test_images_without_boxes_give_a_finite_loss(build_detector: Any, det_batch: Any) -> None:
    task = build_detector("rtmdet-tiny")
    images, boxes = det_batch
    loss = task.compute_loss(task.network.train(), images, [boxes[0], torch.zeros(0, 5)])
    assert torch.isfinite(loss)


# ------------------------------------------------------------------------------------------------ COCO mAP
class FixedDetections(torch.nn.Module):
    """Stands in for a DetectorNetwork: returns the same (boxes, scores, labels) for every image."""

    def __init__(self, rows: list[list[float]]) -> None:
        super().__init__()
        self.model = torch.nn.Identity()
        self.rows = torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)

    def forward(self, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return [(self.rows[:, :4], self.rows[:, 4], self.rows[:, 5].long()) for _ in range(images.shape[0])]


def test_evaluate_of_perfect_and_empty_predictions() -> None:
    from tdfusion_mmdet.task import MMDetTask

    task = MMDetTask(num_classes=2)
    images = torch.rand(1, 3, 80, 100)
    gts = [torch.tensor([[0, 10.0, 10.0, 50.0, 40.0], [1, 60.0, 5.0, 90.0, 70.0]])]
    perfect = task.evaluate(FixedDetections([[10, 10, 50, 40, 0.9, 0], [60, 5, 90, 70, 0.8, 1]]), [(images, gts)])
    assert perfect["mAP50:95"] == pytest.approx(1.0) and perfect["mAP75"] == pytest.approx(1.0)
    swapped = task.evaluate(FixedDetections([[10, 10, 50, 40, 0.9, 1], [60, 5, 90, 70, 0.8, 0]]), [(images, gts)])
    assert swapped["mAP50"] == 0.0  # right boxes, wrong classes: labels are read as classes
    assert task.evaluate(FixedDetections([]), [(images, gts)])["mAP50"] == 0.0


@pytest.mark.parametrize("start_training", [True, False])
def test_evaluate_runs_in_eval_mode_and_restores_the_mode(start_training: bool) -> None:
    """The Task base class wraps evaluate (MMDetTask no longer switches modes itself)."""
    from tdfusion_mmdet.task import MMDetTask

    seen: list[bool] = []

    class ModeRecorder(FixedDetections):
        def forward(self, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
            seen.append(self.training)
            return super().forward(images)

    net = ModeRecorder([[10, 10, 50, 40, 0.9, 0]]).train(start_training)
    gts = [torch.tensor([[0, 10.0, 10.0, 50.0, 40.0]])]
    metrics = MMDetTask(num_classes=1).evaluate(net, [(torch.rand(1, 3, 80, 100), gts)] * 2)
    assert metrics["mAP50:95"] == pytest.approx(1.0)
    assert seen == [False, False] and net.training is start_training


def test_evaluate_matches_a_hand_computed_value() -> None:
    """Two people, one found with IoU 0.625 and no false positive: recall 1/2 at precision 1.

    COCO interpolates precision at 101 recall points: 51 of them (0 … 0.5) have precision 1, so AP = 51/101 at each
    IoU threshold the detection passes (0.50, 0.55, 0.60) and 0 at the seven others.
    """
    from tdfusion_mmdet.task import MMDetTask

    gts = [torch.tensor([[0, 0.0, 0.0, 40.0, 40.0], [0, 100.0, 100.0, 140.0, 140.0]])]
    net = FixedDetections([[0, 0, 40, 25, 0.9, 0]])  # inside the first box: IoU = 25/40 = 0.625
    metrics = MMDetTask(num_classes=1).evaluate(net, [(torch.rand(1, 3, 200, 200), gts)])
    assert metrics["mAP50"] == pytest.approx(51 / 101)
    assert metrics["mAP75"] == pytest.approx(0.0)
    assert metrics["mAP50:95"] == pytest.approx(3 / 10 * 51 / 101)


@pytest.mark.parametrize("name,stem_channels", [("rtmdet-tiny", 1), ("yolox-tiny", 4)])
def test_luminance_option_gives_a_one_channel_stem(
    build_detector: Any, det_batch: Any, name: str, stem_channels: int
) -> None:
    from tdfusion_mmdet.task import MMDetTask
    from tdfusion_openmmlab.luminance import first_conv

    torch.manual_seed(0)  # the same initialisation as the RGB detector of build_detector
    task = MMDetTask(num_classes=1, config=name, input_kind="luminance")
    assert task.input_kind == "luminance" and MMDetTask.input_kind == "rgb"
    net = task.network
    rgb_conv = first_conv(build_detector(name).network.model.backbone)[1]
    conv = next(m for m in net.model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    # CSPNeXt / CSPDarknet hard-code RGB stems: the first conv (YOLOX: after Focus' 4 shifted copies) is summed over
    # the colour channels, the same response to a grey image
    assert conv.in_channels == stem_channels
    torch.testing.assert_close(conv.weight, rgb_conv.weight.reshape(conv.out_channels, -1, 3, *conv.kernel_size).sum(2))
    images, boxes = det_batch
    x = images[:, :1].clone().requires_grad_(True)
    prepared = net.prepare(x.detach())  # no mean / std; zero padding of 64x80 to 64x96
    torch.testing.assert_close(prepared[..., :80], x.detach())
    assert prepared.shape[-1] == 96 and torch.all(prepared[..., 80:] == 0)
    loss = task.compute_loss(net.train(), x, boxes)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(loss) and grad.abs().sum() > 0  # (B, 1, H, W) backpropagates to the fused image
    with pytest.raises(ValueError, match=r"expected luminance images \(B, 1, H, W\)"):
        task.compute_loss(net, images, boxes)


def test_luminance_option_sets_in_channels_where_the_backbone_takes_it() -> None:
    from tdfusion_mmdet.task import MMDetTask

    model = MMDetTask(num_classes=1, config="retinanet-r50", input_kind="luminance").model_config()
    assert model["backbone"]["type"] == "ResNet" and model["backbone"]["in_channels"] == 1
    assert (
        "in_channels"
        not in MMDetTask(num_classes=1, config="rtmdet-tiny", input_kind="luminance").model_config()["backbone"]
    )  # CSPNeXt has no such argument: its stem is converted after building
