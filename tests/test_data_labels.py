"""Label formats: YOLO (x by width, y by height), the released annotation list, VOC XML, masks, and their problems."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tdfusion_core.data import labels as L
from tdfusion_core.data.paired import PairedDataset
from tests.conftest import shared_path
from tests.data_helpers import copy_real, one_torch_thread  # noqa: F401


def _yolo_reference(path, height, width):
    """Independent conversion with numpy: x0=(cx-w/2)*W, y0=(cy-h/2)*H, ..."""
    rows = np.loadtxt(path, ndmin=2)
    cx, cy, bw, bh = rows[:, 1] * width, rows[:, 2] * height, rows[:, 3] * width, rows[:, 4] * height
    return np.stack([rows[:, 0], cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)


def test_yolo_normalises_x_by_width_and_y_by_height(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("1 0.5 0.25 0.1 0.2\n")
    boxes, problems = L.read_yolo(path, (100, 200), num_classes=2)
    assert problems == []
    # the released loader would give x / height: 0.45 * 100 = 45; the right answer uses the width
    assert torch.allclose(boxes, torch.tensor([[1.0, 90.0, 15.0, 110.0, 35.0]]))
    back = L.pixel_to_yolo_boxes(boxes, 100, 200)
    assert torch.allclose(back, torch.tensor([[1.0, 0.5, 0.25, 0.1, 0.2]], dtype=torch.float64), atol=1e-6)


def test_yolo_real_msrs_det_labels_match_numpy():
    path = shared_path("data", "MSRS_det", "train", "labels", "00004N.txt")
    boxes, problems = L.read_yolo(path, (480, 640), num_classes=3)
    assert problems == []
    np.testing.assert_allclose(boxes.numpy(), _yolo_reference(path, 480, 640), atol=1e-3)
    assert boxes.dtype == torch.float32 and boxes.shape[1] == 5


# The YOLO and annotation-list cases below are separate tables on purpose: each reads as its format's own spec.
@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("0 0.5 0.5 0.1", "bad-label"),  # 4 fields
        ("0 0.5 zero 0.1 0.1", "bad-label"),
        ("3 0.5 0.5 0.1 0.1", "bad-label"),  # class out of range for 3 classes
        ("0.5 0.5 0.5 0.1 0.1", "bad-label"),  # fractional class
        ("0 0.5 0.5 0 0.1", "box-size"),
        ("0 0.5 0.5 -0.1 0.1", "box-size"),
        ("0 0.98 0.5 0.1 0.1", "box-outside"),
        ("0 0.5 0.02 0.1 0.1", "box-outside"),
    ],
)
def test_yolo_problems_name_the_file_and_line(tmp_path, line, kind):
    path = tmp_path / "bad.txt"
    path.write_text("0 0.5 0.5 0.1 0.1\n" + line + "\n")
    _, problems = L.read_yolo(path, (10, 10), num_classes=3)
    assert [p.kind for p in problems] == [kind]
    assert problems[0].path == path and "line 2" in problems[0].message


def test_yolo_empty_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n")
    boxes, problems = L.read_yolo(path, (10, 10), None)
    assert [p.kind for p in problems] == ["empty-label"] and boxes.shape == (0, 5)
    assert L.read_yolo(path, (10, 10), None, allow_empty=True)[1] == []


def test_yolo_rounding_just_outside_is_clipped(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("0 0.05 0.5 0.1002 0.2\n")  # x0 = -0.0001 (normalised): rounding, accepted and clipped
    boxes, problems = L.read_yolo(path, (10, 100), None)
    assert problems == [] and float(boxes[0, 1]) == 0.0


def _real_llvip_rows(name):
    path = shared_path("data", "LLVIP", "train", "labels", f"{name}.txt")
    return _yolo_reference(path, 1024, 1280)  # pixels of the 1280x1024 originals, as the released lists


def test_annotation_list_in_resized_pixels_matches_yolo(tmp_path):
    """The released code's list (pixels of 1280x1024) on the 2x-down-sampled shared copies gives the YOLO boxes."""
    names = ["010001", "010002"]
    root = copy_real("LLVIP", names, tmp_path / "LLVIP")
    lines = []
    for name in names:
        rows = np.round(_real_llvip_rows(name)).astype(int)
        lines.append(f"{name}.png " + " ".join(f"{x0},{y0},{x1},{y1},{c}" for c, x0, y0, x1, y1 in rows))
    (tmp_path / "LLVIP_train.txt").write_text("\n".join(lines) + "\n")
    listed = PairedDataset(
        root, "train", labels="annotations", annotations="../LLVIP_train.txt", annotation_size=(1024, 1280)
    )
    yolo = PairedDataset(root, "train", labels="yolo")
    assert listed.target_kind == yolo.target_kind == "boxes"
    for name in names:
        a, b = listed.load(name).target, yolo.load(name).target
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=0.51)  # integer pixels at 2x: half a pixel here


def test_annotation_list_scales_x_and_y_separately(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("img.png 10,20,30,60,0\n")
    entries, problems = L.parse_annotation_list(path)
    assert problems == [] and entries["img"][0] == 1
    lineno, text = entries["img"]
    boxes, problems = L.read_annotation_boxes(path, lineno, text, (50, 200), 1, annotation_size=(100, 100))
    assert problems == []
    assert torch.allclose(boxes, torch.tensor([[0.0, 20.0, 10.0, 60.0, 30.0]]))


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("10,20,5,60,0", "box-size"),
        ("10,20,130,60,0", "box-outside"),
        ("10,20,30,60,7", "bad-label"),
        ("1,2,3", "bad-label"),
        ("", "empty-label"),
    ],
)
def test_annotation_list_problems(tmp_path, text, kind):
    path = tmp_path / "list.txt"
    _, problems = L.read_annotation_boxes(path, 4, text, (100, 100), 2)
    assert [p.kind for p in problems] == [kind] and "line 4" in problems[0].message


def test_annotation_list_duplicates(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("a.png 1,1,2,2,0\nsub/a.jpg 1,1,3,3,0\n")
    entries, problems = L.parse_annotation_list(path)
    assert list(entries) == ["a"] and [p.kind for p in problems] == ["bad-label"]


VOC = """<annotation><size><width>200</width><height>100</height></size>
<object><name>Person</name><bndbox><xmin>20</xmin><ymin>10</ymin><xmax>60</xmax><ymax>50</ymax></bndbox></object>
<object><name>car</name><bndbox><xmin>100</xmin><ymin>40</ymin><xmax>200</xmax><ymax>100</ymax></bndbox></object>
</annotation>"""


def test_voc_xml_scaled_to_image_and_classes_by_name(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(VOC)
    boxes, problems = L.read_voc(path, (50, 50), ["car", "person"])
    assert problems == []
    expected = torch.tensor([[1.0, 5.0, 5.0, 15.0, 25.0], [0.0, 25.0, 20.0, 50.0, 50.0]])
    assert torch.allclose(boxes, expected)
    _, problems = L.read_voc(path, (50, 50), ["person"])
    assert [p.kind for p in problems] == ["bad-label"] and "car" in problems[0].message
    path.write_text("<annotation><object>")
    assert [p.kind for p in L.read_voc(path, (5, 5), ["person"])[1]] == ["unreadable"]


def test_masks_palette_gray_and_problems(tmp_path):
    arr = np.array([[0, 1, 2], [255, 1, 0]], np.uint8)
    pal = Image.frombytes("P", (3, 2), arr.tobytes())  # palette PNG: the file stores indices
    pal.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
    pal.save(tmp_path / "p.png")
    Image.fromarray(arr).save(tmp_path / "l.png")
    for name in ("p.png", "l.png"):
        mask, problems = L.read_mask(tmp_path / name, (2, 3), num_classes=3)
        assert problems == [] and mask.dtype == torch.int64
        assert torch.equal(mask, torch.from_numpy(arr.astype(np.int64)))
    _, problems = L.read_mask(tmp_path / "l.png", (2, 3), num_classes=2)
    assert [p.kind for p in problems] == ["mask-range"] and "2" in problems[0].message
    _, problems = L.read_mask(tmp_path / "l.png", (3, 3), num_classes=3)
    assert [p.kind for p in problems] == ["size-mismatch"]
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    assert [p.kind for p in L.read_mask(tmp_path / "c.png", (2, 3), 3)[1]] == ["bad-label"]
    (tmp_path / "t.png").write_bytes((tmp_path / "l.png").read_bytes()[:30])
    assert [p.kind for p in L.read_mask(tmp_path / "t.png", (2, 3), 3)[1]] == ["unreadable"]


def test_class_names_files(tmp_path):
    (tmp_path / "classes.txt").write_text("person\n\nbicycle\ncar\n")
    assert L.find_class_names(None, tmp_path) == ("person", "bicycle", "car")
    assert L.find_class_names(tmp_path / "nothing") is None
