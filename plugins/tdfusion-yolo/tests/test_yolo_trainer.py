"""The yolo task inside core's MetaTrainer and ``tdfusion train`` on the shared real datasets (tiny budgets)."""

from __future__ import annotations

import math

import pytest
import torch
from click.testing import CliRunner
from yolo_testutils import shared_path

from tdfusion_core.plugin.registry import resolve_dataset
from tdfusion_core.training.config import TrainConfig
from tdfusion_core.training.trainer import MetaTrainer

#: small sizes so a meta step pair takes seconds on a busy CPU (task size: multiples of YOLO's stride 32)
TINY = {"crop_size": (48, 48), "task_size": (64, 96), "batch_size": 1, "progress": False, "log_images": False}
MSRS_CLASSES = ["person", "bicycle", "car"]
#: the smallest configuration of the built-in ReFusion / LPN networks (the CLI test builds them by name)
TINY_NETS = "{dim: 4, num_blocks: 1, heads: 1}"


class SmallFusion(torch.nn.Module):
    """A two-layer fusion net: the trainer tests exercise the detector, not F (ReFusion is costly on a CPU)."""

    def __init__(self, k: int = 2) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(k, 6, 3, padding=1)
        self.b = torch.nn.Conv2d(6, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.b(torch.tanh(self.a(x))))


class SmallGenerator(torch.nn.Module):
    """Per-pixel softmax weights over the sources from one convolution."""

    def __init__(self, k: int = 2) -> None:
        super().__init__()
        self.c = torch.nn.Conv2d(k, k, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.c(x), dim=1)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> int:
    return sum(not torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.mark.parametrize(
    ("dataset", "data_options", "nc"),
    [("LLVIP", {}, 1), ("MSRS_det", {"class_names": MSRS_CLASSES}, 3)],
)
def test_meta_and_fusion_steps_on_real_data(dataset, data_options, nc):
    """Meta steps update G and leave T exactly as it was (T' is functional, BatchNorm restored); the fusion phase
    then trains T; every loss is finite; evaluation gives the mAP metrics."""
    root = shared_path("data", dataset)
    config = TrainConfig(
        task="yolo",
        task_options={"num_classes": nc} if not data_options else {},
        data=str(root),
        data_options=data_options,
        epochs=1,
        meta_steps=2,
        fusion_steps=1,
        seed=0,
        **TINY,
    )
    torch.manual_seed(0)
    trainer = MetaTrainer(config, fusion_net=SmallFusion(), loss_generator=SmallGenerator())
    assert trainer.task.name == "yolo" and trainer.task.num_classes == nc  # from the dataset's class names for MSRS
    assert trainer.task.network.model[-1].nc == nc
    t_before, g_before = _state(trainer.task.network), _state(trainer.loss_generator)

    meta = trainer.meta_phase(0)
    assert trainer.meta_step_count == 2 and trainer.bad_steps == 0
    assert all(math.isfinite(v) for v in meta.values()) and meta["meta/task_loss"] > 0
    assert _changed(g_before, trainer.loss_generator) > 0  # G learned from the detector's loss
    assert _changed(t_before, trainer.task.network) == 0  # T untouched, running statistics included

    fusion = trainer.fusion_phase(0)
    assert all(math.isfinite(v) for v in fusion.values()) and fusion["fusion/task_loss"] > 0
    assert _changed(t_before, trainer.task.network) > 0  # Eq. 9 trained T

    metrics = trainer.evaluate(torch.utils.data.Subset(resolve_dataset(str(root), **data_options), [0, 1]))
    assert set(metrics) >= {"mAP50", "mAP75", "mAP50:95"} and all(0 <= metrics[k] <= 1 for k in metrics)


def test_tdfusion_train_cli_end_to_end_on_llvip(tmp_path):
    from tdfusion_yolo.task import YoloTask

    from tdfusion_core.commands.cli import build_cli

    out = tmp_path / "run"
    args = ["train", "--task", "yolo", "--data", str(shared_path("data", "LLVIP")), "--out", str(out)]
    args += ["--epochs", "1", "--meta-steps", "1", "--fusion-steps", "1", "--set", "task_options={num_classes: 1}"]
    args += ["--set", "crop_size=48", "--set", "task_size=[64,96]", "--set", "progress=false"]
    args += ["--set", f"fusion_options={TINY_NETS}", "--set", f"loss_generator_options={TINY_NETS}"]
    result = CliRunner().invoke(build_cli(), args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "done: 1 epochs" in result.output
    assert (out / "model.pt").is_file() and (out / "checkpoints" / "last.pt").is_file()
    saved = TrainConfig.from_yaml(out / "config.yaml")
    assert saved.task == "yolo" and saved.task_options == {"num_classes": 1}
    # the trained detector's weights load back into a fresh yolo task (strictly)
    state = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    torch.save(state["task_net"], tmp_path / "detector.pt")
    detector = YoloTask(num_classes=1, checkpoint=tmp_path / "detector.pt").network
    for key, value in state["task_net"].items():
        assert torch.equal(detector.state_dict()[key], value), key
