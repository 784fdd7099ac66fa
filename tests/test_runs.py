"""What a training run gives its user: validation and best.pt, results.csv/png, train.log, the epoch line, plan and
ETA, TensorBoard images, `tdfusion val`, instances recorded by class path, the Python API and the export of F."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tdfusion_core.commands.cli import build_cli
from tdfusion_core.tasks.tiny_seg import TinySegTask
from tdfusion_core.training.config import TrainConfig
from tdfusion_core.training.run_logger import epoch_line, read_results_csv
from tdfusion_core.training.trainer import MetaTrainer
from tdfusion_core.training.validation import Validator, resolve_val_set
from tdfusion_core.training.visual import colour_tiles, weight_grid
from tests.conftest import REPO, shared_path
from tests.trainer_utils import BlobScenes, SmallFusion, SmallGenerator, small_settings


def _config(**changes):
    settings = small_settings(epochs=3, meta_steps=1, fusion_steps=2, deterministic=True, device="cpu")
    settings.update(changes)
    return TrainConfig(**settings)


def _trainer(out_dir, task=None, **changes):
    torch.manual_seed(0)
    return MetaTrainer(
        _config(**changes),
        task=task,
        train_set=BlobScenes(6),
        val_set=BlobScenes(4, seed=7),
        fusion_net=SmallFusion(),
        loss_generator=SmallGenerator(),
        out_dir=out_dir,
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    trainer = _trainer(out)
    history = trainer.fit()
    return out, trainer, history


def test_validation_metrics_every_epoch_and_best_checkpoint(finished_run):
    out, trainer, history = finished_run
    assert len(history) == 3
    for row in history:
        assert 0.0 <= row["val/mIoU"] <= 1.0
        assert row["val/fusion/EN"] > 0 and "val/fusion/SF" in row and "val/fusion/SSIM" in row
    best_epoch = max(range(3), key=lambda e: history[e]["val/mIoU"]) + 1
    assert trainer.validator.best[0] == "mIoU" and trainer.validator.best[2] == best_epoch
    assert history[-1]["val/best_epoch"] == best_epoch
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    last = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert best["epoch"] == best_epoch and last["epoch"] == 3
    # best.pt holds the networks of its epoch: evaluating them again gives the logged value
    again = _trainer(None)
    again.load_state_dict(best)
    metrics = Validator(BlobScenes(4, seed=7)).evaluate(again)
    assert metrics["val/mIoU"] == pytest.approx(history[best_epoch - 1]["val/mIoU"], abs=1e-6)


def test_results_csv_png_and_train_log(finished_run):
    out, _, history = finished_run
    rows = read_results_csv(out / "results.csv")
    assert [r["epoch"] for r in rows] == [1.0, 2.0, 3.0]
    for key in ("meta/task_loss", "fusion/fusion_loss", "lr/fusion", "weight/source0", "val/mIoU", "epoch_seconds"):
        assert rows[-1][key] == pytest.approx(history[-1][key], rel=1e-5), key
    assert (out / "results.png").stat().st_size > 1000
    log = (out / "train.log").read_text()
    assert "plan: 3 epoch(s) left of 3; per epoch 1 meta step(s) and 2 fusion step(s)" in log
    assert "epoch 3/3 |" in log and "run completed" in log


def test_epoch_line_is_one_aligned_line():
    metrics = {
        "meta/task_loss": 1.23456,
        "meta/fusion_loss": 0.5,
        "fusion/fusion_loss": 0.25,
        "fusion/task_loss": 1.0,
        "weight/source0": 0.48,
        "weight/source1": 0.52,
        "g/entropy": 0.69,
        "val/mIoU": 0.5,
        "val/IoU.1": 0.2,
        "val/fusion/EN": 6.5,
        "epoch_seconds": 125.0,
    }
    line = epoch_line(3, 40, metrics, eta=3600.0)
    assert "\n" not in line and "{" not in line
    assert line.startswith("epoch  3/40 | meta: task  1.2346 fusion  0.5000 | F/T: fusion  0.2500 task  1.0000")
    assert "w: 0.480 0.520" in line and "G entropy: 0.690" in line and "mIoU  0.5000" in line and "EN  6.5000" in line
    assert "IoU.1" not in line and "2.1 min" in line and "ETA 60.0 min" in line
    assert len(epoch_line(3, 40, metrics)) == len(epoch_line(13, 40, metrics))  # aligned from epoch to epoch


def test_plan_and_estimate_are_logged_before_the_run_ends(tmp_path, caplog):
    caplog.set_level("INFO", logger="tdfusion_core")
    _trainer(None, epochs=1, meta_steps=4, fusion_steps=4).fit()
    messages = [r.getMessage() for r in caplog.records]
    plan = next(i for i, m in enumerate(messages) if m.startswith("plan:"))
    estimate = next(i for i, m in enumerate(messages) if m.startswith("estimate:"))
    end = next(i for i, m in enumerate(messages) if m.startswith("epoch 1/1"))
    assert plan < estimate < end
    assert "4 meta step(s) and 4 fusion step(s)" in messages[plan]
    assert "per epoch" in messages[estimate] and "meta step" in messages[estimate]


def test_tensorboard_gets_the_weight_map_images(finished_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _, _ = finished_run
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    images = acc.Images("images/weights")
    assert [i.step for i in images] == [1, 2, 3]
    assert "epoch/val/mIoU" in acc.Tags()["scalars"]


def test_weight_grid_has_column_titles_and_a_colour_bar():
    sources, fused = torch.rand(2, 2, 40, 50), torch.rand(2, 1, 40, 50)
    weights = torch.full((2, 2, 40, 50), 0.5)
    grid = weight_grid(sources, fused, weights)
    body_h = 2 * 40 + 2
    assert grid.shape[0] == 14 + body_h  # a header row of titles
    header = grid[:14, :250]
    assert (header < 128).any()  # dark title text on white
    bar = grid[14:, -38:-26]  # the 12-pixel bar, 1 at the top and 0 at the bottom
    assert np.abs(bar[0, 0].astype(int) - colour_tiles(np.array([[1.0]]))[0, 0]).max() <= 2
    assert np.abs(bar[-1, 0].astype(int) - colour_tiles(np.array([[0.0]]))[0, 0]).max() <= 2


def test_validation_split_found_automatically(tmp_path):
    from tdfusion_core.data.synthetic import write_synthetic

    write_synthetic(tmp_path / "data", 2, size=(32, 40), split="train")
    config = TrainConfig(data=str(tmp_path / "data"))
    assert resolve_val_set(config) is None  # no val/ folder: no validation
    write_synthetic(tmp_path / "data", 3, size=(32, 40), split="val")
    assert len(resolve_val_set(config)) == 3
    assert resolve_val_set(config.evolve(val_split=None)) is None
    with pytest.raises(ValueError, match="val_split 'test'"):
        resolve_val_set(config.evolve(val_split="test"))


def test_val_command_evaluates_a_finished_run(tmp_path):
    from tdfusion_core.data.synthetic import write_synthetic

    data = tmp_path / "data"
    for split in ("train", "val"):
        write_synthetic(data, 2, size=(32, 40), split=split)
    run = tmp_path / "run"
    runner = CliRunner()
    cli = build_cli()
    args = ["train", "--data", str(data), "--out", str(run), "--epochs", "1", "--meta-steps", "1", "--device", "cpu"]
    args += ["--fusion-steps", "1", "--set", "task_options.width=4", "--set", "crop_size=16", "--set", "progress=false"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "2 for validation" in result.output and "best: val mIoU" in result.output
    assert (run / "checkpoints" / "best.pt").is_file() and (run / "results.csv").is_file()
    logged = read_results_csv(run / "results.csv")[-1]["val/mIoU"]
    result = runner.invoke(cli, ["val", "--run", str(run), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    import json

    metrics = json.loads(result.output[result.output.index("{") :])
    assert metrics["val/mIoU"] == pytest.approx(logged, abs=1e-4)
    # a second run into the same --out goes to <out>2
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert f"this run goes to {run}2" in result.output and (tmp_path / "run2" / "config.yaml").is_file()


class MyTask(TinySegTask):
    """A custom task given as an instance (never registered)."""


def test_instances_are_recorded_by_class_path_and_cli_resume_refuses(tmp_path, monkeypatch):
    out = tmp_path / "run"
    trainer = _trainer(out, task=MyTask(num_classes=3, width=4), epochs=1)
    trainer.fit()
    saved = TrainConfig.from_yaml(out / "config.yaml")
    assert saved.task == "python:tests.test_runs.MyTask"
    assert saved.data == "python:tests.trainer_utils.BlobScenes"
    seen = {}  # what model.pt would record (fit writes model.pt only for registry-built F and G, not these)
    monkeypatch.setattr("tdfusion_core.training.checkpoints.save_model_checkpoint", lambda path, **kw: seen.update(kw))
    trainer.export_model(tmp_path / "model.pt")
    assert seen["extra"]["task"] == "python:tests.test_runs.MyTask" and seen["extra"]["data"] == saved.data
    result = CliRunner().invoke(build_cli(), ["train", "--out", str(out), "--resume"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "built in Python from a task instance (tests.test_runs.MyTask)" in result.output
    # resuming in Python with the same instances works
    resumed = MetaTrainer(
        saved.evolve(epochs=2),
        task=MyTask(num_classes=3, width=4),
        train_set=BlobScenes(6),
        val_set=BlobScenes(4, seed=7),
        fusion_net=SmallFusion(),
        loss_generator=SmallGenerator(),
        out_dir=out,
        resume=True,
    )
    assert resumed.epoch == 1 and resumed.validator.best is not None


def test_public_names_are_reexported_lazily():
    code = (
        "import sys, tdfusion_core; assert 'torch' not in sys.modules, 'import tdfusion_core pulled in torch'; "
        "from tdfusion_core import MetaTrainer, TrainConfig, Task, FusionLoss, load_model_checkpoint, Validator, "
        "export_fusion_net, pick_device, MetaStep, ConfigError; print('ok')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch_on_roadscene(tmp_path, fmt):
    from tdfusion_core.apps.export import check_export, export_fusion_net, read_pairs

    weights = shared_path("weights", "ReFusion_IVIF.pth")
    path = export_fusion_net(weights, tmp_path / f"f.{fmt}", fmt)
    pairs = read_pairs(shared_path("data", "RoadScene", "train"), limit=2)
    pairs = [p[..., :160, :200] for p in pairs] + [pairs[0][..., :97, :131]]  # three sizes, one odd
    result = check_export(weights, path, pairs)
    assert result["max_abs_diff"] <= 1e-4
    assert len(set(result["sizes"])) >= 2
