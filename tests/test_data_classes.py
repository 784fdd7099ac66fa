"""Class count of a YOLO folder without class names: inferred from the labels, never the detector's default."""

import shutil

from tdfusion_core.data import PairedDataset
from tests.conftest import shared_path


def test_class_count_inferred_from_yolo_labels():
    assert PairedDataset(shared_path("data", "LLVIP")).num_classes == 1
    assert PairedDataset(shared_path("data", "MSRS_det")).num_classes == 3


def test_explicit_count_or_names_win(tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(shared_path("data", "MSRS_det"), root)
    assert PairedDataset(root, num_classes=5).num_classes == 5
    (root / "classes.txt").write_text("person\nbike\ncar\ntruck\n")
    data = PairedDataset(root)
    assert data.num_classes == 4 and data.class_names == ("person", "bike", "car", "truck")
