"""The experiment runner on real (folder) data: images resized on load with their labels, cells ordered seed by
seed, a report that names only the budget fields that apply, the ``--image-size`` option."""

from __future__ import annotations

import json

import attrs
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tdfusion_core.apps.experiment import (
    Budget,
    ExperimentSpec,
    Method,
    _datasets,
    builtin_method,
    cell_order,
    run_experiment,
    to_markdown,
)
from tdfusion_core.commands.cli import build_cli
from tdfusion_core.plugin.registry import resolve_dataset
from tests.data_helpers import copy_real, make_folder, one_torch_thread  # noqa: F401

TINY = Budget(1, 1, 1, 3, downstream_batch=2, crop=16)


def test_image_size_resizes_real_pairs_and_scales_their_boxes(tmp_path):
    root = copy_real("LLVIP", ["010001"], tmp_path / "llvip")  # 640x512 (W x H), pedestrian boxes
    copy_real("LLVIP", ["010041"], root, split="val")
    spec = ExperimentSpec(
        out=tmp_path / "exp",
        methods=[builtin_method("ir")],
        seeds=[0],
        budget=attrs.evolve(TINY, image_size=(128, 160)),
        data=str(root),
        test_split="val",
    )
    full = resolve_dataset(str(root), split="train")[0]
    train, test = _datasets(spec)
    sample = train[0]
    assert full.size == (512, 640) and sample.size == (128, 160) and sample.chroma.shape[-2:] == (128, 160)
    assert sample.name == "train_010001" and test[0].size == (128, 160) and test[0].name == "test_010041"
    assert len(sample.target) == len(full.target) > 0
    assert torch.equal(sample.target[:, 0], full.target[:, 0])
    assert torch.allclose(sample.target[:, 1:], full.target[:, 1:] / 4, atol=1e-4)  # both axes scaled by 1/4
    assert float(sample.sources.mean()) == pytest.approx(float(full.sources.mean()), abs=0.01)  # the same scene
    unsized, _ = _datasets(attrs.evolve(spec, budget=TINY))
    assert unsized[0].size == (512, 640)


def test_a_real_folder_experiment_fuses_and_scores_at_the_image_size(tmp_path):
    root = make_folder(tmp_path / "data", names=("a", "b", "c"), size=(40, 56), mask_classes=3)
    make_folder(root, names=("d", "e"), size=(40, 56), split="val", mask_classes=3, seed=1)
    spec = ExperimentSpec(
        out=tmp_path / "exp",
        methods=[builtin_method("tdfusion"), builtin_method("mean")],
        seeds=[0],
        budget=attrs.evolve(TINY, image_size=(32, 48)),
        data=str(root),
        data_options={"num_classes": 3},
        test_split="val",
        task_options={"input_kind": "luminance", "width": 4},
        train_options={"loss_generator_options": {"dim": 8, "num_blocks": 1, "heads": 2}},
        fusion_metrics=("EN",),
    )
    summary = run_experiment(spec, echo=lambda s: None)
    for folder in ("TDFusion/seed0", "Mean_rule"):
        images = sorted((tmp_path / "exp" / "images" / folder).glob("*.png"))
        assert [p.stem for p in images] == ["test_d", "test_e", "train_a", "train_b", "train_c"]
        assert {Image.open(p).size for p in images} == {(48, 32)}  # PIL: (W, H)
    assert set(summary["methods"]) == {"TDFusion", "Mean rule"}
    assert 0 <= summary["methods"]["TDFusion"]["mIoU"]["mean"] <= 1
    budget_line = to_markdown(summary).splitlines()[0]
    assert "image_size=[32, 48]" in budget_line and "n_train" not in budget_line and "size=[96" not in budget_line
    assert json.loads((tmp_path / "exp" / "results.json").read_text())["budget"]["image_size"] == [32, 48]
    cell = json.loads((tmp_path / "exp" / "cells" / "TDFusion" / "seed0.json").read_text())
    assert cell["cpu_seconds"] > 0 and cell["seconds"] > 0  # CPU time too: wall time misleads on a shared machine
    # --report-only: the finished cells' summary; a method never run is reported as not run, and nothing runs
    lines: list[str] = []
    more = attrs.evolve(spec, methods=[*spec.methods, builtin_method("ir")], seeds=[0, 1])
    partial = run_experiment(more, echo=lines.append, run_missing=False)
    assert set(partial["methods"]) == {"TDFusion", "Mean rule"} and partial["seeds"] == [0]
    assert sum(line.endswith("not run") for line in lines) == 4 and sum("cached" in line for line in lines) == 2
    assert not (tmp_path / "exp" / "cells" / "Infrared_only").exists()


def test_cells_run_seed_by_seed_with_the_untrained_rows_first():
    methods = [
        builtin_method("tdfusion"),
        builtin_method("I"),
        builtin_method("ir"),
        Method("ref", "rule", rule="max", once=True),
    ]
    spec = ExperimentSpec(out="unused", methods=methods, seeds=[5, 1], budget=TINY)
    order = [(m.name, s) for m, s in cell_order(spec)]
    assert order == [
        ("Infrared only", 5),
        ("ref", 5),
        ("TDFusion", 5),
        ("I: fixed ½", 5),
        ("Infrared only", 1),
        ("TDFusion", 1),
        ("I: fixed ½", 1),
    ]


def test_synthetic_reports_do_not_name_the_real_data_budget_fields(tmp_path):
    spec = ExperimentSpec(out=tmp_path, methods=[builtin_method("ir")], seeds=[0], budget=TINY)
    summary = {
        "seeds": [0],
        "budget": attrs.asdict(spec.budget),
        "data": "synthetic",
        "methods": {},
        "comparisons": {},
        "task_metrics": [],
        "fusion_metrics": [],
        "primary": "mIoU",
        "reference": "x",
    }
    line = to_markdown(summary).splitlines()[0]
    assert "n_train=32" in line and "image_size" not in line and "max_images" not in line


def test_cli_image_size_is_checked(tmp_path):
    cli = build_cli()
    bad = CliRunner().invoke(cli, ["experiment", "--out", str(tmp_path), "--data", str(tmp_path), "--image-size", "x7"])
    assert bad.exit_code != 0 and "--image-size" in bad.output and "HxW" in bad.output
    synthetic = CliRunner().invoke(cli, ["experiment", "--out", str(tmp_path), "--image-size", "64x80"])
    assert synthetic.exit_code != 0 and "applies to real data" in synthetic.output


def test_holdout_keeps_the_last_images_of_a_one_split_dataset_apart(tmp_path):
    root = make_folder(tmp_path / "data", names=("a", "b", "c", "d", "e"), size=(24, 32), mask_classes=2)
    spec = ExperimentSpec(
        out=tmp_path / "exp", methods=[builtin_method("ir")], seeds=[0], budget=TINY, data=str(root), holdout=2
    )
    train, test = _datasets(spec)
    assert [train[i].name for i in range(len(train))] == ["train_a", "train_b", "train_c"]
    assert [test[i].name for i in range(len(test))] == ["test_d", "test_e"]
    with pytest.raises(ValueError, match="hold out 1 to 4"):
        _datasets(attrs.evolve(spec, holdout=5))
    with pytest.raises(ValueError, match="would be training images"):
        ExperimentSpec(
            out=tmp_path, methods=[builtin_method("ir")], seeds=[0], budget=TINY, data=str(root), test_split="train"
        )
    cli = CliRunner().invoke(
        build_cli(), ["experiment", "--out", str(tmp_path / "x"), "--data", str(root), "--test-split", "train"]
    )
    assert cli.exit_code != 0 and "--holdout N" in cli.output and "Traceback" not in cli.output
