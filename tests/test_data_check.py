"""`tdfusion data check` on deliberately broken copies of real shared files: each problem, named by its file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tdfusion_core.commands.cli import build_cli
from tdfusion_core.data.check import check_dataset, check_split
from tdfusion_core.data.labels import DataError
from tdfusion_core.data.paired import PairedDataset
from tests.data_helpers import copy_real, one_torch_thread  # noqa: F401

LLVIP = ["010001", "010002", "010003"]
MSRS = ["00004N", "00008N"]


def _run(*args: str):
    return CliRunner().invoke(build_cli(), ["data", "check", *map(str, args)])


def _kinds(problems):
    return sorted(p.kind for p in problems)


def test_clean_copies_pass(tmp_path):
    copy_real("LLVIP", LLVIP[:2], tmp_path / "llvip")
    copy_real("LLVIP", ["010041"], tmp_path / "llvip", split="val")
    copy_real("RoadScene", ["FLIR_00211"], tmp_path / "roadscene", labels=False)
    copy_real("TNO", ["01"], tmp_path / "tno", labels=False)
    problems, counts = check_dataset(tmp_path / "llvip")
    assert problems == [] and sorted(counts.values()) == [1, 2]
    result = _run(tmp_path / "llvip", "--num-classes", "1")
    assert result.exit_code == 0 and result.output.startswith("OK: 3 pairs")
    for name in ("roadscene", "tno"):
        assert _run(tmp_path / name).exit_code == 0
    assert _run(tmp_path / "llvip" / "train").exit_code == 0  # a split folder itself


def test_missing_partners_both_ways(tmp_path):
    root = copy_real("LLVIP", LLVIP, tmp_path)
    (root / "train" / "vi" / "010002.png").unlink()
    (root / "train" / "ir" / "010003.png").rename(root / "train" / "ir" / "099999.png")
    problems, _ = check_split(root / "train")
    assert _kinds(problems) == ["missing-partner"] * 3
    text = "\n".join(map(str, problems))
    assert "ir/010002.png" in text and "vi/010003.png" in text and "ir/099999.png" in text
    result = _run(root)
    assert result.exit_code == 1 and "010002.png" in result.output and "FAILED" in result.output
    with pytest.raises(DataError, match="010002"):
        PairedDataset(root, labels="yolo")


def test_label_without_images(tmp_path):
    root = copy_real("MSRS_det", MSRS, tmp_path)
    (root / "train" / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    problems, _ = check_split(root / "train")
    assert [(p.kind, p.path.name) for p in problems] == [("missing-partner", "orphan.txt")]


def test_size_mismatch_between_sources(tmp_path):
    root = copy_real("MSRS_det", MSRS, tmp_path)
    path = root / "train" / "ir" / "00008N.png"
    Image.open(path).resize((320, 240)).save(path)
    problems, _ = check_split(root / "train")
    assert [p.kind for p in problems] == ["size-mismatch"]
    text = str(problems[0])  # names both files and both sizes
    assert "ir/00008N.png" in text and "vi/00008N.png" in text and "240x320" in text and "480x640" in text
    data = PairedDataset(root, labels="yolo")
    with pytest.raises(DataError, match=r"ir/00008N\.png"):
        data.load("00008N")


def test_unreadable_and_truncated_images(tmp_path):
    root = copy_real("LLVIP", LLVIP[:2], tmp_path)
    vi = root / "train" / "vi" / "010001.png"
    vi.write_bytes(vi.read_bytes()[: vi.stat().st_size // 2])  # truncated
    (root / "train" / "ir" / "010002.png").write_bytes(b"not an image at all")
    problems, _ = check_split(root / "train")
    assert [(p.kind, p.path.parent.name, p.path.name) for p in problems] == [
        ("unreadable", "vi", "010001.png"),
        ("unreadable", "ir", "010002.png"),
    ]
    data = PairedDataset(root)
    for i in range(2):
        with pytest.raises(DataError, match="unreadable"):
            data[i]


def test_mask_values_outside_the_class_range(tmp_path):
    """Masks for real pairs (the shared sets have none): one with a value past the class count."""
    root = copy_real("MSRS_det", MSRS, tmp_path, labels=False)
    (root / "train" / "label").mkdir()
    ok = np.zeros((480, 640), np.uint8)
    ok[100:200, 100:300] = 2
    ok[0, 0] = 255  # ignore index: allowed
    Image.fromarray(ok).save(root / "train" / "label" / "00004N.png")
    bad = ok.copy()
    bad[300:310, 10:20] = 9
    Image.fromarray(bad).save(root / "train" / "label" / "00008N.png")
    problems, _ = check_split(root / "train", num_classes=9)
    assert [(p.kind, p.path.name) for p in problems] == [("mask-range", "00008N.png")]
    assert "9" in problems[0].message and "0..8" in problems[0].message
    assert check_split(root / "train", num_classes=10)[0] == []
    (root / "train" / "label" / "classes.txt").write_text("\n".join(f"c{i}" for i in range(9)))
    result = _run(root)  # the class count comes from label/classes.txt
    assert result.exit_code == 1 and "00008N.png" in result.output and "mask-range" in result.output
    Image.fromarray(ok[:240]).save(root / "train" / "label" / "00004N.png")
    assert ("size-mismatch", "00004N.png") in [
        (p.kind, p.path.name) for p in check_split(root / "train", num_classes=10)[0]
    ]


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("0 0.98 0.5 0.1 0.1", "box-outside"),
        ("0 0.5 -0.2 0.1 0.1", "box-outside"),
        ("0 0.5 0.5 0.0 0.1", "box-size"),
        ("0 0.5 0.5 0.1 -0.05", "box-size"),
        ("5 0.5 0.5 0.1 0.1", "bad-label"),
        ("0 0.5 0.5", "bad-label"),
    ],
)
def test_bad_boxes_in_a_real_label_file(tmp_path, line, kind):
    root = copy_real("LLVIP", LLVIP[:2], tmp_path)
    path = root / "train" / "labels" / "010002.txt"
    path.write_text(path.read_text() + line + "\n")
    problems, _ = check_split(root / "train", num_classes=1)
    assert [(p.kind, p.path.name) for p in problems] == [(kind, "010002.txt")]
    result = _run(root, "--num-classes", "1", "--json")
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert [r["kind"] for r in report["problems"]] == [kind] and report["problems"][0]["path"].endswith("010002.txt")
    with pytest.raises(DataError, match=r"010002\.txt"):
        PairedDataset(root, num_classes=1).load("010002")


def test_empty_label_file(tmp_path):
    root = copy_real("MSRS_det", MSRS, tmp_path)
    (root / "train" / "labels" / "00004N.txt").write_text("")
    problems, _ = check_split(root / "train")
    assert [(p.kind, p.path.name) for p in problems] == [("empty-label", "00004N.txt")]
    assert check_split(root / "train", allow_empty=True)[0] == []
    assert _run(root, "--allow-empty").exit_code == 0
    assert _run(root).exit_code == 1
    assert PairedDataset(root, allow_empty=True).load("00004N").target.shape == (0, 5)


def test_several_problems_at_once_and_other_sources(tmp_path):
    root = copy_real("TNO", ["01", "03"], tmp_path, labels=False)
    (root / "train" / "ir").rename(root / "train" / "lwir")
    assert _run(root).exit_code != 0  # no ir/ anywhere: a clear error
    assert "no source folder" in _run(root).output
    assert _run(root, "--sources", "lwir,vi").exit_code == 0
    (root / "train" / "vi" / "03.png").write_bytes(b"")
    (root / "train" / "lwir" / "01.png").unlink()
    problems, counts = check_dataset(root, sources=("lwir", "vi"))
    assert _kinds(problems) == ["missing-partner", "unreadable"] and list(counts.values()) == [1]
    assert _run(root, "--sources", "lwir").exit_code == 2  # usage error: one source
