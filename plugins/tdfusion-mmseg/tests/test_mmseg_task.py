"""The ``mmseg`` / ``segformer`` tasks: registration, offline configs, the loss, functional T', evaluation, weights."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as nnf
from mmseg_testutils import NUM_CLASSES

from tdfusion_core.kernel.task import functional_task_loss

MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)


def _walk(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        found.append(node)
        for value in node.values():
            found += _walk(value)
    elif isinstance(node, list):
        for value in node:
            found += _walk(value)
    return found


def test_tasks_registered_by_the_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    from tdfusion_core.plugin import registry
    from tdfusion_core.plugin.manager import reset_plugin_manager

    monkeypatch.setenv("TDFUSION_LOAD_PLUGINS", "mmseg")
    reset_plugin_manager()
    try:
        table = registry.entries("task")
        assert table["mmseg"][1] == "mmseg" and table["segformer"][1] == "mmseg"
        task = registry.get_task("segformer", num_classes=3)
        assert task.input_kind == "luminance" and task.target_kind == "mask"  # as the released SegFormer
        assert task.loss_resolution == "full"
        assert registry.get_task("mmseg", num_classes=3).input_kind == "rgb"
    finally:
        monkeypatch.undo()
        reset_plugin_manager()


@pytest.mark.parametrize(
    "variant,dims,layers", [("b0", 32, [2, 2, 2, 2]), ("b2", 64, [3, 4, 6, 3]), ("b5", 64, [3, 6, 40, 3])]
)
def test_segformer_variants_resolve_offline(offline_guard: None, variant: str, dims: int, layers: list[int]) -> None:
    from tdfusion_mmseg.task import SegFormerTask

    cfg = SegFormerTask(num_classes=7, variant=variant).model_config()
    assert cfg["backbone"]["type"] == "MixVisionTransformer"
    assert cfg["backbone"]["embed_dims"] == dims and cfg["backbone"]["num_layers"] == layers
    assert cfg["decode_head"]["num_classes"] == 7
    nodes = _walk(cfg)
    assert not [n for n in nodes if n.get("type") == "Pretrained"], "download-only weights must be removed"
    assert not [n for n in nodes if n.get("type") in ("SyncBN", "MMSyncBN")]
    assert "http" not in repr(cfg)


def test_unknown_variant_and_config_are_clear_errors() -> None:
    from tdfusion_mmseg.task import MMSegTask, SegFormerTask
    from tdfusion_openmmlab.glue import OpenMMLabConfigError

    with pytest.raises(ValueError, match=r"b0, b1, b2, b3, b4, b5"):
        SegFormerTask(variant="b9")
    with pytest.raises(OpenMMLabConfigError, match="no config file 'not-a-config'"):
        MMSegTask(num_classes=2, config="not-a-config").model_config()
    with pytest.raises(ValueError, match=r"loss_resolution must be one of \('full', 'task'\)"):
        SegFormerTask(loss_resolution="half")
    with pytest.raises(ValueError, match="input_kind must be 'luminance' or 'rgb'"):
        SegFormerTask(input_kind="bgr")


def test_local_pretrained_weights_are_kept(tmp_path: Path) -> None:
    from tdfusion_openmmlab.glue import sanitize_model_config

    local = tmp_path / "mit_b0.pth"
    local.write_bytes(b"")
    model = {
        "backbone": {"init_cfg": {"type": "Pretrained", "checkpoint": str(local)}, "frozen_stages": 1},
        "head": {"init_cfg": [{"type": "Pretrained", "checkpoint": "https://x/y.pth"}, {"type": "Normal"}]},
    }
    assert sanitize_model_config(model) is True
    assert model["backbone"]["init_cfg"]["checkpoint"] == str(local)
    assert model["backbone"]["frozen_stages"] == 1  # pretrained weights remain: keep the config's freezing
    assert model["head"]["init_cfg"] == [{"type": "Normal"}]


def test_builds_offline_with_dataset_class_count(base_task: Any) -> None:
    from tdfusion_mmseg.task import SegmentorNetwork

    net = base_task.network
    assert isinstance(net, SegmentorNetwork)
    assert type(net.model).__name__ == "EncoderDecoder"
    assert net.model.decode_head.num_classes == NUM_CLASSES
    assert net.model.decode_head.conv_seg.out_channels == NUM_CLASSES
    assert net.in_channels == 1 and net.model.backbone.embed_dims == 32
    assert net.model.backbone.layers[0][0].projection.in_channels == 1  # released SegFormer: in_chans=1
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in net.modules())
    # only the segmentor's weights are saved: normalisation constants are non-persistent buffers
    assert all(k.startswith("model.") for k in net.state_dict())


def released_ce_loss(inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Port of the released TDFusion ``utils.CE_Loss``: logits upsampled to the mask (bilinear, align_corners=True)
    when both sides differ, then ``nn.CrossEntropyLoss()`` over every pixel."""
    _, c, h, w = inputs.size()
    _, ht, wt = target.size()
    if h != ht and w != wt:
        inputs = nnf.interpolate(inputs, size=(ht, wt), mode="bilinear", align_corners=True)
    return torch.nn.CrossEntropyLoss()(inputs.permute(0, 2, 3, 1).reshape(-1, c), target.reshape(-1))


def test_default_loss_is_the_released_full_resolution_cross_entropy(seg_task: Any, batch: Any) -> None:
    images, _ = batch
    g = torch.Generator().manual_seed(5)
    masks = torch.randint(0, NUM_CLASSES, (2, 128, 160), generator=g)  # native resolution, twice the task input
    first = masks[0]
    assert seg_task.resize_targets(first, (128, 160), (64, 80)) is first  # "full": masks stay as loaded
    net = seg_task.network.eval()  # eval: no dropout / drop-path, so both sides are deterministic
    x = images.clone().requires_grad_(True)
    loss = seg_task.compute_loss(net, x, masks)
    # independent: the released SegFormer.forward (raw luminance in, no mean / std; logits upsampled to the input
    # with align_corners=True) followed by the released CE_Loss
    with torch.no_grad():
        logits = net.model.decode_head(net.model.extract_feat(images))
        logits = nnf.interpolate(logits, size=(64, 80), mode="bilinear", align_corners=True)
        reference = released_ce_loss(logits, masks)
    torch.testing.assert_close(loss.detach(), reference, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0  # (B, 1, H, W) backpropagates to the input
    with pytest.raises(ValueError, match=r"expected luminance images \(B, 1, H, W\)"):
        seg_task.compute_loss(net, torch.rand(2, 3, 64, 80), masks)


def test_masks_of_different_native_sizes_give_the_pixel_weighted_mean(seg_task: Any, batch: Any) -> None:
    images, _ = batch
    g = torch.Generator().manual_seed(6)
    masks = [
        torch.randint(0, NUM_CLASSES, (128, 160), generator=g),
        torch.randint(0, NUM_CLASSES, (96, 120), generator=g),
    ]
    collated = seg_task.collate_targets(masks)
    assert isinstance(collated, list)
    net = seg_task.network.eval()
    loss = seg_task.compute_loss(net, images, collated)
    each = [float(seg_task.compute_loss(net, images[i : i + 1], m[None]).detach()) for i, m in enumerate(masks)]
    sizes = [m.numel() for m in masks]
    assert float(loss.detach()) == pytest.approx((each[0] * sizes[0] + each[1] * sizes[1]) / sum(sizes), rel=1e-5)


def test_task_resolution_option_is_the_segmentors_own_loss_on_rgb(rgb_base_task: Any, rgb_batch: Any) -> None:
    from tdfusion_mmseg.task import MMSegTask

    task = MMSegTask(num_classes=NUM_CLASSES, loss_resolution="task")
    task.network = copy.deepcopy(rgb_base_task.network)
    images, masks = rgb_batch
    assert task.input_kind == "rgb" and task.network.model.backbone.layers[0][0].projection.in_channels == 3
    assert task.resize_targets(masks[0], (64, 80), (32, 40)).shape == (32, 40)  # nearest to the task size
    net = task.network.eval()
    x = images.clone().requires_grad_(True)
    loss = task.compute_loss(net, x, masks)
    assert loss.dim() == 0 and torch.isfinite(loss)
    # independent: normalise by hand, run backbone + head, mmseg's CE (mean over all pixels, ignored ones count 0)
    normalised = (images * 255 - MEAN) / STD
    with torch.no_grad():
        logits = net.model.decode_head(net.model.extract_feat(normalised))
        logits = nnf.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
        ce = nnf.cross_entropy(logits, masks, ignore_index=255, reduction="sum") / masks.numel()
    torch.testing.assert_close(loss.detach(), ce, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_rgb_checkpoint_loads_into_the_luminance_network(rgb_base_task: Any, tmp_path: Path) -> None:
    from tdfusion_mmseg.task import SegFormerTask

    path = tmp_path / "rgb.pth"
    torch.save(rgb_base_task.network.state_dict(), path)
    net = SegFormerTask(num_classes=NUM_CLASSES, checkpoint=path).network
    rgb = rgb_base_task.network.model.backbone.layers[0][0].projection.weight
    lum = net.model.backbone.layers[0][0].projection.weight
    assert lum.shape[1] == 1
    torch.testing.assert_close(lum, rgb.sum(1, keepdim=True))  # the same response to a grey image
    grey = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(
        nnf.conv2d(grey, lum, stride=4, padding=3), nnf.conv2d(grey.expand(1, 3, 32, 32), rgb, stride=4, padding=3)
    )


def test_functional_t_prime_equals_loading_the_stepped_parameters(seg_task: Any, batch: Any) -> None:
    images, masks = batch
    net = seg_task.network.train()
    params = dict(net.named_parameters())
    before = {k: v.detach().clone() for k, v in params.items()}
    torch.manual_seed(1)
    loss = functional_task_loss(seg_task, images, masks)
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    stepped = {k: (p - 0.5 * g if g is not None else p).detach() for (k, p), g in zip(params.items(), grads)}
    assert sum(g is not None for g in grads) > 0.9 * len(grads)

    torch.manual_seed(2)
    functional = functional_task_loss(seg_task, images, masks, params=stepped)
    for name, value in net.named_parameters():
        assert torch.equal(value, before[name]), f"{name} was modified by the functional call"

    loaded = copy.deepcopy(net)
    with torch.no_grad():
        for name, value in loaded.named_parameters():
            value.copy_(stepped[name])
    torch.manual_seed(2)  # the same drop-path / dropout draws
    reference = seg_task.compute_loss(loaded, images, masks)
    torch.testing.assert_close(functional, reference, rtol=1e-5, atol=1e-6)
    assert (
        abs(float(functional.detach()) - float(loss.detach())) > 1e-4
    )  # the step changed the loss: the parameters were used


@pytest.mark.parametrize("start_training", [True, False])
def test_evaluate_runs_in_eval_mode_and_restores_the_mode(seg_task: Any, batch: Any, start_training: bool) -> None:
    """The Task base class wraps evaluate (MMSegTask no longer switches modes itself)."""
    images, masks = batch
    seen: list[bool] = []

    class ModeRecorder(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(self.training)
            return nnf.one_hot(masks.clamp(max=NUM_CLASSES - 1), NUM_CLASSES).permute(0, 3, 1, 2).float()

    net = ModeRecorder().train(start_training)
    metrics = seg_task.evaluate(net, [(images, masks)] * 2)
    assert 0.0 <= metrics["mIoU"] <= 1.0
    assert seen == [False, False] and net.training is start_training


def test_evaluate_returns_per_class_metrics_and_restores_mode(seg_task: Any, batch: Any) -> None:
    images, masks = batch
    net = seg_task.network.train()
    metrics = seg_task.evaluate(net, [(images, masks)])
    assert net.training
    for key in ("mIoU", "mAcc", "aAcc", *(f"IoU.{c}" for c in range(NUM_CLASSES))):
        assert 0.0 <= metrics[key] <= 1.0
    logits = net.eval()(images)
    assert logits.shape == (2, NUM_CLASSES, 64, 80)

    # a network predicting the ground truth scores 1 everywhere (ignored pixels do not count)
    class Oracle(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nnf.one_hot(masks.clamp(max=NUM_CLASSES - 1), NUM_CLASSES).permute(0, 3, 1, 2).float()

    perfect = seg_task.evaluate(Oracle(), [(images, masks)])
    assert perfect["mIoU"] == pytest.approx(1.0) and perfect["mAcc"] == pytest.approx(1.0)
    # masks at twice the resolution (native size, "full"): logits upsampled with align_corners=True to match
    from tdfusion_core.data.targets import resize_mask

    # (horizontal stripes: bilinear interpolation is then one-dimensional, and 64 -> 128 rows with align_corners=True
    # rounds each output row to the source row that nearest-neighbour upsampling of the mask picks)
    stripes = torch.randint(0, NUM_CLASSES, (2, 64, 1), generator=torch.Generator().manual_seed(3)).expand(2, 64, 80)

    class StripeOracle(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nnf.one_hot(stripes, NUM_CLASSES).permute(0, 3, 1, 2).float()

    native = torch.stack([resize_mask(m, (128, 160)) for m in stripes])
    assert seg_task.evaluate(StripeOracle(), [(images, native)])["mIoU"] == pytest.approx(1.0)


def test_padding_to_a_size_divisor_keeps_outputs_at_image_size(base_task: Any, batch: Any) -> None:
    from tdfusion_mmseg.task import SegFormerTask

    images, masks = batch
    task = SegFormerTask(num_classes=NUM_CLASSES, size_divisor=32)
    task.network = copy.deepcopy(base_task.network)
    task.network.size_divisor = 32  # 64x80 -> 64x96 input, ignored padding in the loss
    assert task.network.prepare(images).shape[-2:] == (64, 96)
    loss = task.compute_loss(task.network.eval(), images, masks)
    assert torch.isfinite(loss)
    assert task.network(images).shape[-2:] == (64, 80)


def test_checkpoint_round_trip_in_both_key_styles(base_task: Any, tmp_path: Path) -> None:
    from tdfusion_mmseg.task import SegFormerTask

    net = base_task.network
    raw = tmp_path / "mmseg_style.pth"
    torch.save({"state_dict": net.model.state_dict(), "meta": {"epoch": 3}}, raw)
    wrapped = tmp_path / "wrapper_style.pth"
    torch.save(net.state_dict(), wrapped)
    for path in (raw, wrapped):
        torch.manual_seed(123)  # a different random init, overwritten by the checkpoint
        task = SegFormerTask(num_classes=NUM_CLASSES, checkpoint=path)
        for (name, a), b in zip(task.network.state_dict().items(), net.state_dict().values()):
            assert torch.equal(a, b), name


def test_checkpoint_of_another_class_count_loads_all_but_the_head(base_task: Any, tmp_path: Path) -> None:
    from tdfusion_mmseg.task import SegFormerTask

    path = tmp_path / "other_classes.pth"
    torch.save(base_task.network.state_dict(), path)
    with pytest.warns(UserWarning, match="tensors of another shape skipped"):
        task = SegFormerTask(num_classes=3, checkpoint=path)
        net = task.network
    assert net.model.decode_head.conv_seg.out_channels == 3
    torch.testing.assert_close(
        net.model.backbone.layers[0][0].projection.weight,
        base_task.network.model.backbone.layers[0][0].projection.weight,
    )
