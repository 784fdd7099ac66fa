"""The lifecycle hooks a training run fires: order, counts, payloads, and ``skipped`` on a bad meta step."""

from __future__ import annotations

import math
import warnings

import pytest

from tdfusion_core import hookimpl
from tdfusion_core.training.trainer import TrainingDivergedError
from tests.conftest import plugin_registered
from tests.test_trainer import _NaNScenes
from tests.trainer_utils import small_trainer


class Recorder:
    """Records every event hook as ``(name, payload)``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    @hookimpl
    def tdfusion_on_run_start(self, trainer, config):
        self.events.append(("run_start", {"config": config}))

    @hookimpl
    def tdfusion_on_epoch_start(self, trainer, epoch):
        self.events.append(("epoch_start", {"epoch": epoch}))

    @hookimpl
    def tdfusion_on_meta_step_end(self, trainer, step, metrics):
        self.events.append(("meta_step_end", {"step": step, "metrics": dict(metrics)}))

    @hookimpl
    def tdfusion_on_fusion_step_end(self, trainer, step, metrics):
        self.events.append(("fusion_step_end", {"step": step, "metrics": dict(metrics)}))

    @hookimpl
    def tdfusion_on_epoch_end(self, trainer, epoch, metrics):
        self.events.append(("epoch_end", {"epoch": epoch, "metrics": dict(metrics)}))

    @hookimpl
    def tdfusion_on_checkpoint_saved(self, trainer, path, epoch):
        self.events.append(("checkpoint_saved", {"path": path, "epoch": epoch}))

    @hookimpl
    def tdfusion_on_run_end(self, trainer, status):
        self.events.append(("run_end", {"status": status}))

    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    def payloads(self, name: str) -> list[dict]:
        return [payload for n, payload in self.events if n == name]


@pytest.fixture
def recorder():
    with plugin_registered(Recorder(), "event-recorder") as rec:
        yield rec


def test_hooks_fire_in_order_with_counts_and_payloads(tmp_path, recorder):
    trainer = small_trainer(tmp_path, epochs=2, meta_steps=2, fusion_steps=3, task_step="sgd", log_images=False)
    trainer.fit()
    epoch = ["epoch_start", *["meta_step_end"] * 2, *["fusion_step_end"] * 3, "epoch_end", "checkpoint_saved"]
    assert recorder.names() == ["run_start", *epoch, *epoch, "run_end"]

    assert recorder.payloads("run_start")[0]["config"] is trainer.config
    assert [p["epoch"] for p in recorder.payloads("epoch_start")] == [0, 1]
    assert [p["step"] for p in recorder.payloads("meta_step_end")] == [1, 2, 3, 4]
    assert [p["step"] for p in recorder.payloads("fusion_step_end")] == [1, 2, 3, 4, 5, 6]
    for p in recorder.payloads("meta_step_end"):
        assert {"task_loss", "fusion_loss", "inner_task_loss"} <= set(p["metrics"])
        assert "skipped" not in p["metrics"]
        assert all(math.isfinite(v) for v in p["metrics"].values())
    for p in recorder.payloads("fusion_step_end"):
        assert {"fusion_loss", "task_loss", "intensity_loss", "gradient_loss"} <= set(p["metrics"])
    ends = recorder.payloads("epoch_end")
    assert [p["epoch"] for p in ends] == [0, 1]
    assert [p["metrics"] for p in ends] == trainer.history
    for p in ends:
        assert {"meta/task_loss", "fusion/task_loss", "fusion/fusion_loss", "lr/fusion", "epoch_seconds"} <= set(
            p["metrics"]
        )
        assert {"weight/source0", "weight/source1"} <= set(p["metrics"])
    # the epoch's meta metrics are the means of its steps' metrics
    steps = [p["metrics"]["task_loss"] for p in recorder.payloads("meta_step_end")]
    assert ends[0]["metrics"]["meta/task_loss"] == pytest.approx(sum(steps[:2]) / 2, rel=1e-6)
    saved = recorder.payloads("checkpoint_saved")
    assert [p["epoch"] for p in saved] == [1, 2]
    assert all(p["path"] == str(trainer.checkpoint_path) for p in saved)
    assert recorder.payloads("run_end") == [{"status": "completed"}]


def test_generator_statistics_every_n_meta_steps_and_at_each_epochs_last(recorder):
    trainer = small_trainer(epochs=2, meta_steps=3, fusion_steps=1, task_step="sgd", generator_stats_every=2)
    trainer.fit()
    meta = recorder.payloads("meta_step_end")
    with_stats = [p["step"] for p in meta if "g/entropy" in p["metrics"]]
    assert with_stats == [2, 3, 4, 6]  # every 2nd step, and steps 3 and 6 close an epoch
    # an epoch's mean of a statistic is over the steps that computed it, the losses over all its steps
    first = [p["metrics"] for p in meta[:3]]
    assert trainer.history[0]["meta/g/entropy"] == pytest.approx((first[1]["g/entropy"] + first[2]["g/entropy"]) / 2)
    assert trainer.history[0]["meta/task_loss"] == pytest.approx(sum(m["task_loss"] for m in first) / 3, rel=1e-6)


def test_generator_statistics_can_be_turned_off(recorder):
    small_trainer(epochs=1, meta_steps=2, fusion_steps=1, task_step="sgd", generator_stats_every=0).fit()
    assert not any("g/entropy" in p["metrics"] for p in recorder.payloads("meta_step_end"))


def test_bad_meta_steps_are_announced_as_skipped_and_the_run_fails(recorder):
    trainer = small_trainer(epochs=1, meta_steps=3, fusion_steps=1, max_bad_steps=2, task_step="sgd")
    trainer.train_set = _NaNScenes(8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(TrainingDivergedError):
            trainer.fit()
    assert recorder.names() == ["run_start", "epoch_start", "meta_step_end", "meta_step_end", "run_end"]
    meta = recorder.payloads("meta_step_end")
    assert [p["step"] for p in meta] == [1, 2]
    assert all(p["metrics"]["skipped"] == 1.0 for p in meta)
    assert recorder.payloads("run_end") == [{"status": "failed"}]
    assert trainer.history == []


class _Stop:
    @hookimpl
    def tdfusion_on_fusion_step_end(self, trainer, step, metrics):
        raise KeyboardInterrupt


def test_an_interrupted_run_ends_with_status_stopped(recorder):
    with plugin_registered(_Stop(), "stop"), pytest.raises(KeyboardInterrupt):
        small_trainer(epochs=1, meta_steps=1, fusion_steps=2, task_step="sgd").fit()
    assert recorder.names()[-1] == "run_end"
    assert recorder.payloads("run_end") == [{"status": "stopped"}]
    assert "epoch_end" not in recorder.names()
