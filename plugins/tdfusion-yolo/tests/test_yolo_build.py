"""Building: any ultralytics detection yaml, nc from num_classes, 1 or 3 input channels, local checkpoints only."""

from __future__ import annotations

import copy

import pytest
import torch
from tdfusion_yolo.task import YoloTask

from tdfusion_core.plugin.registry import get_task


def _first_conv(net: torch.nn.Module) -> torch.nn.Conv2d:
    return next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))


def test_registered_through_the_entry_point(fresh_registry):
    from tdfusion_core.plugin.manager import describe_plugins

    task = get_task("yolo", num_classes=2, model="yolov8n.yaml")
    assert isinstance(task, YoloTask) and task.target_kind == "boxes"
    rows = {row["name"]: row for row in describe_plugins()}
    assert rows["yolo"]["error"] is None and rows["yolo"]["registers"].get("task") == ["yolo"]


def test_default_is_yolov8n_with_nc_from_num_classes(base_task):
    net = base_task.network  # built with input_kind="rgb" (conftest)
    head = net.model[-1]
    assert type(head).__name__ == "Detect" and head.nc == 1
    assert _first_conv(net).in_channels == 3
    # the class branch is 64 channels wide for nc <= 64 (c3 = max(64, min(nc, 100)))
    assert [seq[-1].weight.shape[:2] for seq in head.cv3] == [(1, 64)] * 3
    assert torch.as_tensor(net.stride).tolist() == [8.0, 16.0, 32.0]


def test_default_input_is_the_fused_luminance_as_released():
    # released TDFusion: YoloBody's stem is Conv(1, ...) and it is fed the one-channel fused image
    task = YoloTask(num_classes=3)
    assert task.input_kind == "luminance" and YoloTask.input_kind == "luminance" and task.in_channels == 1
    net = task.network
    assert _first_conv(net).in_channels == 1 and net.model[-1].nc == 3
    x = torch.rand(1, 1, 64, 64, requires_grad=True)
    loss = task.compute_loss(net, x, [torch.tensor([[2.0, 4, 4, 40, 30]])])
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(loss) and grad.abs().sum() > 0  # backpropagates to the fused image
    with pytest.raises(ValueError, match=r"expects images \(B, 1, H, W\)"):
        task.compute_loss(net, torch.rand(1, 3, 64, 64), [torch.zeros(0, 5)])


def test_rgb_input_is_an_option():
    task = YoloTask(num_classes=3, input_kind="rgb")
    assert task.input_kind == "rgb" and task.in_channels == 3
    net = task.network
    assert _first_conv(net).in_channels == 3
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    (grad,) = torch.autograd.grad(task.compute_loss(net, x, [torch.tensor([[2.0, 4, 4, 40, 30]])]), x)
    assert grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"expects images \(B, 3, H, W\)"):
        task.compute_loss(net, torch.rand(1, 1, 64, 64), [torch.zeros(0, 5)])


def test_yolov8n_with_80_classes_matches_ultralytics_parameter_count():
    # "YOLOv8n summary: 225 layers, 3157200 parameters, 3157184 gradients" (comment in ultralytics' yolov8.yaml):
    # the 16 non-trainable ones are the DFL projection, which the task keeps as a buffer
    net = YoloTask(num_classes=80, input_kind="rgb").build_network()
    assert sum(p.numel() for p in net.parameters()) == 3_157_184
    assert dict(net.named_buffers())["model.22.dfl.conv.weight"].flatten().tolist() == list(range(16))


def test_scale_from_the_yaml_name():
    small = YoloTask(num_classes=1, model="yolov8s.yaml", input_kind="rgb").build_network()
    assert _first_conv(small).out_channels == 32  # n: 16, s: 32 (width multiple 0.25 vs 0.5 of 64)


@pytest.mark.parametrize(
    ("model", "error", "match"),
    [
        ("yolov8n-seg.yaml", ValueError, "Segment head"),
        ("yolov8n.pt", ValueError, "pass trained weights as checkpoint"),
        ("no-such-model-v99.yaml", FileNotFoundError, "not found"),
    ],
)
def test_bad_model_configs_are_reported(model, error, match):
    with pytest.raises(error, match=match):
        YoloTask(num_classes=1, model=model).build_network()


def test_bad_options_are_reported():
    with pytest.raises(ValueError, match="input_kind"):
        YoloTask(input_kind="bgr")
    with pytest.raises(ValueError, match="loss_reduction"):
        YoloTask(loss_reduction="sum")
    with pytest.raises(ValueError, match="gain box"):
        YoloTask(box=float("nan"))


def test_state_dict_checkpoint_round_trip(base_task, tmp_path):
    path = tmp_path / "t.pth"
    net = copy.deepcopy(base_task.network)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01)
    torch.save({"state_dict": net.state_dict()}, path)
    loaded = YoloTask(num_classes=1, checkpoint=path, input_kind="rgb").network
    for (k, a), b in zip(net.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(FileNotFoundError, match="not found"):
        _ = YoloTask(num_classes=1, checkpoint=tmp_path / "missing.pt").network


def test_ultralytics_checkpoint_transfers_matching_tensors(base_task, tmp_path):
    """An ultralytics-format .pt (a pickled model) with another nc: everything but the class convs transfers."""
    source = YoloTask(num_classes=3).network
    path = tmp_path / "yolov8n-3cls.pt"
    torch.save({"model": copy.deepcopy(source).half(), "train_args": {}}, path)  # the layout ultralytics saves
    target = YoloTask(num_classes=1, checkpoint=path).network
    src, dst = source.state_dict(), target.state_dict()
    same = [k for k in dst if k in src and src[k].shape == dst[k].shape]
    assert len(same) > 0.95 * len(dst)
    for k in same:
        if ".cv3." not in k:  # ultralytics rebuilds the class branch when nc changes
            torch.testing.assert_close(dst[k].float(), src[k].half().float(), msg=k)
    assert all(v.dtype == torch.float32 for v in dst.values() if v.is_floating_point())


def test_missing_num_classes_falls_back_to_the_yaml_with_a_warning():
    task = YoloTask()
    with pytest.warns(UserWarning, match="num_classes not given"):
        net = task.build_network()
    assert task.num_classes == 80 and net.model[-1].nc == 80


def test_missing_ultralytics_is_reported_with_the_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from tdfusion_yolo.plugin import tdfusion_plugin_ready

    from tdfusion_core.plugin.hookspecs import PluginNotReadyError

    assert tdfusion_plugin_ready() is None
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ultralytics" else real(name, *a))
    expected = 'ultralytics not installed (needed by the yolo task): pip install torch==2.14.1 torchvision==0.29.1 "tdfusion-yolo"'
    assert tdfusion_plugin_ready() == expected
    with pytest.raises(PluginNotReadyError, match="ultralytics not installed"):
        YoloTask(num_classes=1)


class _WritesMarker:
    """Unpickling it would create ``path``: the stand-in for a malicious checkpoint."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_a_checkpoint_that_would_run_code_is_refused_with_safe_advice(tmp_path):
    """Neither core's reader nor ultralytics' allow-listed loader runs it; the error says how to convert safely."""
    from tdfusion_core.common.torch_files import CheckpointError

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": _WritesMarker(str(marker)), "train_args": {}}, path)
    with pytest.raises(CheckpointError) as info:
        YoloTask(num_classes=1).load_checkpoint(None, path)  # refused before the network is touched
    message = str(info.value)
    assert not marker.exists()
    assert "evil.pt" in message and "refused" in message and "\n" not in message
    assert "weights_only=False" not in message and "safe_globals" in message
    truncated = tmp_path / "truncated.pt"
    torch.save({"w": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        YoloTask(num_classes=1).load_checkpoint(None, truncated)
