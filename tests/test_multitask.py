"""Several tasks at once: the composite task's loss, targets and metrics, its meta-gradient, a two-task run."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as nnf

from tdfusion_core import hookimpl
from tdfusion_core.common.colour import rgb_to_ycbcr, task_input
from tdfusion_core.data.sample import Sample
from tdfusion_core.data.synthetic import BOX_CLASSES, SyntheticScenes
from tdfusion_core.kernel.meta import MetaStep, adam_task_step
from tdfusion_core.kernel.multitask import MultiTask, TaskTargets
from tdfusion_core.kernel.task import Task
from tdfusion_core.tasks.tiny_seg import TinySegTask
from tdfusion_core.training.config import TrainConfig
from tdfusion_core.training.trainer import MetaTrainer
from tests.conftest import plugin_registered
from tests.torch_threads import one_torch_thread  # noqa: F401
from tests.trainer_utils import SmallFusion, SmallGenerator, small_settings


class CountNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, stride=2, padding=1)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


# A test task of its own (boxes as labels), alike in shape only to the other test tasks (e.g. dist_worker's).
class TinyCountTask(Task):
    """Counts the objects of each box class on the fused luminance: a detection-like task (boxes as labels)."""

    name = "tiny-count"
    input_kind = "luminance"
    target_kind = "boxes"

    def build_network(self) -> nn.Module:
        return CountNet(int(self.num_classes or 3))

    def counts(self, targets: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        c = int(self.num_classes or 3)
        return torch.stack([torch.bincount(t[:, 0].long(), minlength=c)[:c] for t in targets]).to(like)

    def compute_loss(self, network: nn.Module, images: torch.Tensor, targets: Any) -> torch.Tensor:
        pred = network(images)
        return nnf.mse_loss(pred, self.counts(targets, pred))

    @torch.no_grad()
    def evaluate(self, network: nn.Module, batches: Iterable[tuple[torch.Tensor, Any]]) -> dict[str, float]:
        errors = [(network(images) - self.counts(targets, images)).abs().mean() for images, targets in batches]
        return {"mae": float(torch.stack(errors).mean())}


class RgbCountTask(TinyCountTask):
    """The counting task on RGB (so that a composite with tiny-seg passes the images through unchanged)."""

    input_kind = "rgb"

    def build_network(self) -> nn.Module:
        return CountNet(int(self.num_classes or 3), in_channels=3)


class _CountPlugin:
    @hookimpl
    def tdfusion_register_tasks(self) -> dict[str, Any]:
        return {"tiny-count": TinyCountTask}


@pytest.fixture
def count_plugin():
    with plugin_registered(_CountPlugin(), "tiny-count-test"):
        yield


def _composite(weights: dict[str, float], count: type[Task] = TinyCountTask) -> MultiTask:
    torch.manual_seed(0)
    # tiny-seg on RGB (its default is the luminance now) so that the composite mixes input kinds
    seg = TinySegTask(num_classes=5, width=4, input_kind="rgb")
    tasks = {"seg": seg, "count": count(num_classes=len(BOX_CLASSES))}
    return MultiTask(tasks, weights=weights)


def _batch(task: MultiTask, n: int = 2, size: tuple[int, int] = (32, 48)) -> tuple[torch.Tensor, Any]:
    data = SyntheticScenes(n, size=size, target="both")
    samples = [data[i] for i in range(n)]
    images = task_input(
        torch.stack([s.sources[1:2] for s in samples]), torch.stack([s.chroma for s in samples]), task.input_kind
    )
    targets = task.collate_targets([task.resize_targets(s.target, s.size, s.size) for s in samples])
    return images, targets


def test_config_tasks_round_trip_and_errors(tmp_path):
    config = TrainConfig(
        tasks=[{"name": "tiny-seg", "options": {"width": 4}}, {"name": "tiny-count", "key": "count", "weight": 0.5}]
    )
    assert config.tasks == [
        {"name": "tiny-seg", "weight": 1.0, "options": {"width": 4}, "key": "tiny-seg", "target": None},
        {"name": "tiny-count", "weight": 0.5, "options": {}, "key": "count", "target": None},
    ]
    config.to_yaml(tmp_path / "c.yaml")
    assert TrainConfig.from_yaml(tmp_path / "c.yaml") == config
    assert TrainConfig().tasks is None  # the single `task` field stays the default
    with pytest.raises(ValueError, match="unknown key"):
        TrainConfig(tasks=[{"name": "tiny-seg", "wieght": 2}])
    with pytest.raises(ValueError, match="weight must be a number >= 0"):
        TrainConfig(tasks=[{"name": "tiny-seg", "weight": -1}])
    with pytest.raises(ValueError, match="used twice"):
        TrainConfig(tasks=["tiny-seg", "tiny-seg"])


def test_composite_loss_is_the_weighted_sum_and_targets_split_per_task():
    task = _composite({"seg": 1.0, "count": 0.25})
    assert task.input_kind == "rgb"  # mixed kinds: RGB, the luminance task gets its Y
    images, targets = _batch(task)
    assert isinstance(targets, TaskTargets) and set(targets) == {"seg", "count"}
    assert targets["seg"].shape == (2, 32, 48) and isinstance(targets["count"], list)
    seg, count = task.tasks["seg"], task.tasks["count"]
    expected = seg.compute_loss(seg.network, images, targets["seg"]) + 0.25 * count.compute_loss(
        count.network, rgb_to_ycbcr(images)[0], targets["count"]
    )
    total = task.compute_loss(task.network, images, targets)
    assert torch.allclose(total, expected, rtol=1e-6)
    assert set(task.last_losses) == {"seg", "count"} and float(task.last_losses["count"]) > 0


def test_composite_reports_each_tasks_metrics_with_a_prefix():
    task = _composite({"seg": 1.0, "count": 1.0})
    images, targets = _batch(task)
    metrics = task.evaluate(task.network, [(images, targets)])
    assert 0 <= metrics["seg/mIoU"] <= 1 and metrics["count/mae"] >= 0
    assert all(k.startswith(("seg/", "count/")) for k in metrics)


class _Double(torch.utils.data.Dataset):
    def __init__(self, base: Any) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> Sample:
        s = self.base[i]
        return Sample(s.sources.double(), s.chroma.double(), s.target, s.name)


def _meta_grad(task: Task) -> dict[str, torch.Tensor]:
    """G's meta-gradient (float64) for ``task`` on fixed synthetic batches and fixed small F and G."""
    torch.manual_seed(1)
    fusion, generator = SmallFusion().double(), SmallGenerator().double()
    task.network.double()
    config = TrainConfig(crop_size=16, task_size=(32, 48), progress=False, log_images=False)
    trainer = MetaTrainer(
        config,
        task=task,
        train_set=_Double(SyntheticScenes(4, size=(32, 48), target="both")),
        fusion_net=fusion,
        loss_generator=generator,
    )
    gen = torch.Generator().manual_seed(0)
    crop, mtr = trainer.batcher.whole([trainer.train_set[0]], gen)
    _, mts = trainer.batcher.whole([trainer.train_set[1]], gen)
    step = MetaStep(fusion, generator, task, trainer.fusion_loss, "jvp")
    return step.compute(crop, mtr, mts, 1e-2, adam_task_step(trainer.opt_task, task.network)).grad_g


@pytest.mark.parametrize("key", ["seg", "count"])
def test_meta_gradient_of_one_weighted_task_is_that_tasks_meta_gradient(key):
    composite = _composite({"seg": float(key == "seg"), "count": float(key == "count")}, count=RgbCountTask)
    alone = MultiTask({key: composite.tasks[key]})  # the same network, the other task absent
    got, expected = _meta_grad(composite), _meta_grad(alone)
    scale = max(float(g.abs().max()) for g in expected.values())
    assert scale > 0
    for name, g in expected.items():
        assert torch.allclose(got[name], g, rtol=0, atol=1e-10 * scale), name


def test_training_with_two_tasks(count_plugin, tmp_path):
    config = TrainConfig(
        **small_settings(
            tasks=[
                {"name": "tiny-seg", "options": {"width": 4}},
                {"name": "tiny-count", "key": "count", "weight": 0.5, "options": {"num_classes": len(BOX_CLASSES)}},
            ],
            meta_steps=1,
            fusion_steps=2,
            task_size=(32, 48),
            log_images=False,
        )
    )
    torch.manual_seed(0)
    trainer = MetaTrainer(
        config,
        train_set=SyntheticScenes(6, size=(32, 48), target="both"),
        fusion_net=SmallFusion(),
        loss_generator=SmallGenerator(),
        out_dir=tmp_path,
    )
    task = trainer.task
    assert isinstance(task, MultiTask) and task.weights == {"tiny-seg": 1.0, "count": 0.5}
    assert task.tasks["tiny-seg"].num_classes == 5  # from the dataset's mask classes
    before = {k: v.clone() for k, v in trainer.task.network.state_dict().items()}
    g0 = {k: v.clone() for k, v in trainer.loss_generator.state_dict().items()}
    history = trainer.fit()
    assert trainer.meta_step_count == 2
    assert {"fusion/task_loss/tiny-seg", "fusion/task_loss/count"} <= set(history[-1])
    after = trainer.task.network.state_dict()
    for prefix in ("tiny-seg.", "count."):  # both task networks were trained
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix)), prefix
    assert any(not torch.equal(g0[k], v) for k, v in trainer.loss_generator.state_dict().items())
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert any(k.startswith("count.") for k in state["task_net"])
    metrics = trainer.evaluate(SyntheticScenes(3, size=(32, 48), target="both", split="val"))
    assert 0 <= metrics["tiny-seg/mIoU"] <= 1 and metrics["count/mae"] >= 0
