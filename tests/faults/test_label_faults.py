"""Issue 17 item 4: the class count never comes silently from a typo; out-of-range labels name their file."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from click.testing import CliRunner

from tdfusion_core.commands.cli import build_cli
from tdfusion_core.data.labels import DataError
from tdfusion_core.data.paired import PairedDataset
from tdfusion_core.training.config import TrainConfig
from tdfusion_core.training.trainer import MetaTrainer
from tests.data_helpers import make_folder, write_gray


def _yolo(root, lines: dict[str, str]):
    make_folder(root, names=tuple(lines))
    for name, text in lines.items():
        path = root / "train" / "labels" / f"{name}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_typo_class_index_is_refused_naming_file_and_line(tmp_path):
    root = _yolo(tmp_path / "ds", {"a": "0 0.5 0.5 0.2 0.2\n", "b": "1 0.5 0.5 0.2 0.2\n99999 0.4 0.4 0.1 0.1\n"})
    with pytest.raises(DataError, match=r"b\.txt: line 2: class index 99999 would make 100000 classes"):
        PairedDataset(root)
    data = PairedDataset(root, num_classes=2)  # an explicit count: the typo is a bad label of that file
    assert any(p.kind == "bad-label" and p.path.name == "b.txt" for p in data.check())


def test_inferred_class_count_warns_with_file_and_line(tmp_path, caplog):
    root = _yolo(tmp_path / "ds", {"a": "0 0.5 0.5 0.2 0.2\n", "b": "0 0.5 0.5 0.2 0.2\n2 0.4 0.4 0.1 0.1\n"})
    with caplog.at_level(logging.WARNING, logger="tdfusion.data"):
        assert PairedDataset(root).num_classes == 3
    assert "inferred from the largest class index, 2" in caplog.text and "b.txt line 2" in caplog.text


def test_mask_values_out_of_range_fail_data_check_naming_the_file(tmp_path):
    root = make_folder(tmp_path / "ds", mask_classes=3)
    write_gray(root / "train" / "label" / "b.png", np.full((24, 32), 4))
    (root / "classes.txt").write_text("bg\nperson\ncar\n")
    result = CliRunner().invoke(build_cli(), ["data", "check", str(root)])
    assert result.exit_code == 1 and "b.png" in result.output and "mask-range" in result.output


def test_training_names_the_mask_file_beyond_the_task_classes(tmp_path):
    root = make_folder(tmp_path / "ds", mask_classes=3)
    write_gray(root / "train" / "label" / "b.png", np.full((24, 32), 4))
    config = TrainConfig(
        task="tiny-seg",
        task_options={"num_classes": 3, "width": 4},
        data=str(root),
        epochs=1,
        meta_steps=0,
        fusion_steps=3,
        crop_size=16,
        task_size=(24, 32),
        progress=False,
        log_images=False,
    )
    trainer = MetaTrainer(config, train_set=PairedDataset(root))
    with pytest.raises(DataError, match=r"b\.png"):
        trainer.fit()
