"""Downstream protocol: a fresh task network per method, same budget and initialisation; reports and errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tdfusion_core.apps.downstream import DownstreamError, DownstreamMethod, run_downstream, source_index
from tdfusion_core.commands.cli import build_cli
from tdfusion_core.plugin.registry import resolve_dataset


@pytest.fixture(autouse=True)
def one_thread():
    """The task networks here are tiny: intra-op threads only add overhead (and contention on a shared machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> dict[str, Path]:
    """Synthetic scenes with masks (``tdfusion data synth``) and two "fusion methods": the mean of the sources and
    a constant gray image (no information at all)."""
    root = tmp_path_factory.mktemp("downstream")
    data = root / "scenes"
    result = CliRunner().invoke(build_cli(), ["data", "synth", "--out", str(data), "--n", "16", "--size", "48x64"])
    assert result.exit_code == 0, result.output
    mean, blank = root / "mean", root / "blank"
    mean.mkdir()
    blank.mkdir()
    for ir_path in sorted((data / "train" / "ir").iterdir()):
        ir = np.asarray(Image.open(ir_path).convert("L"), dtype=np.float64)
        vis = np.asarray(Image.open(data / "train" / "vi" / ir_path.name).convert("L"), dtype=np.float64)
        Image.fromarray(np.round((ir + vis) / 2).astype(np.uint8)).save(mean / ir_path.name)
        Image.fromarray(np.full(ir.shape, 128, np.uint8)).save(blank / ir_path.name)
    return {"data": data, "mean": mean, "blank": blank}


def _run(args: list[str]):
    return CliRunner().invoke(build_cli(), args)


def test_downstream_cli_compares_methods(scenes, tmp_path):
    out = tmp_path / "ds"
    result = _run(
        [
            *("downstream", "--task", "tiny-seg", "--data", str(scenes["data"])),
            *("--fused", f"mean={scenes['mean']}", "--fused", f"blank={scenes['blank']}", "--source", "ir"),
            *("--out", str(out), "--steps", "40", "--batch-size", "4", "--quiet"),
            # RGB (gray replicated): the 40-step budget was tuned with it; tiny-seg's default is now the luminance,
            # with which this budget leaves every method at the same one-class prediction (80 steps separate them)
            *("--task-option", "width=8", "--task-option", "lr=0.01", "--task-option", "input_kind=rgb"),
        ]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "downstream.json").read_text())
    ds = report["datasets"]["scenes"]
    assert set(ds["methods"]) == {"mean", "blank", "ir only"}
    assert report["metrics"] == ["mIoU", "mAcc", "aAcc"]
    run = report["run"]
    assert run["task"] == "tiny-seg" and run["steps"] == 40 and run["size"] == [48, 64]
    assert run["train_images"] == 12 and run["val_images"] == 4
    for values in ds["methods"].values():
        assert 0.0 <= values["mIoU"] <= 1.0 and 0.0 <= values["aAcc"] <= 1.0
    # a constant image carries no information (the network can only learn a per-position prior): the real images
    # must do better after the same budget
    assert ds["methods"]["blank"]["mIoU"] < max(ds["methods"]["mean"]["mIoU"], ds["methods"]["ir only"]["mIoU"])
    with (out / "downstream.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["method"] for r in rows} == {"mean", "blank", "ir only"}
    md = (out / "downstream.md").read_text()
    best = ds["best"]["mIoU"][0]
    assert f"| {best} | **{ds['methods'][best]['mIoU']:.4f}**" in md


def test_same_seed_same_result_and_source_only(scenes):
    train = resolve_dataset(str(scenes["data"]))
    methods = [DownstreamMethod("mean", fused_dir=scenes["mean"]), DownstreamMethod("mean2", fused_dir=scenes["mean"])]
    opts = {"width": 4}
    a = run_downstream("tiny-seg", train, methods, steps=4, batch_size=4, task_options=opts)
    # same images, same seed -> identical training and metrics (the protocol is fair between methods)
    assert a.table.means["mean"] == a.table.means["mean2"]
    assert a.final_loss["mean"] == a.final_loss["mean2"]
    b = run_downstream("tiny-seg", train, [DownstreamMethod("vis", source=1)], steps=4, batch_size=4, task_options=opts)
    assert set(b.table.means) == {"vis"} and b.table.metrics == ["mIoU", "mAcc", "aAcc"]


def test_bad_images_are_named(scenes, tmp_path):
    train = resolve_dataset(str(scenes["data"]))
    partial = tmp_path / "partial"
    partial.mkdir()
    files = sorted(scenes["mean"].iterdir())
    for p in files[1:]:
        (partial / p.name).write_bytes(p.read_bytes())
    with pytest.raises(DownstreamError, match=files[0].stem):
        run_downstream("tiny-seg", train, [DownstreamMethod("p", fused_dir=partial)], steps=1)
    (partial / files[0].name).write_bytes(files[0].read_bytes())
    Image.open(files[3]).resize((32, 24)).save(partial / files[3].name)
    with pytest.raises(DownstreamError, match=f"{files[3].name} is 24x32"):
        run_downstream("tiny-seg", train, [DownstreamMethod("p", fused_dir=partial)], steps=1, val_fraction=0.9)


def test_cli_errors(scenes, tmp_path):
    result = _run(
        ["downstream", "--task", "nope", "--data", str(scenes["data"]), "--source", "ir", "--out", str(tmp_path)]
    )
    assert result.exit_code != 0 and "tiny-seg" in result.output  # lists the registered tasks
    result = _run(["downstream", "--task", "tiny-seg", "--data", str(scenes["data"]), "--out", str(tmp_path)])
    assert result.exit_code != 0 and "--fused" in result.output
    result = _run(
        [
            "downstream",
            "--task",
            "tiny-seg",
            "--data",
            str(scenes["data"]),
            "--source",
            "thermal",
            "--out",
            str(tmp_path),
        ]
    )
    assert result.exit_code != 0 and "unknown source" in result.output
    assert source_index("vis") == 1 and source_index("2") == 2
    with pytest.raises(ValueError, match="exactly one"):
        DownstreamMethod("x")
