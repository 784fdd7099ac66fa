"""Pixel boxes -> ultralytics' normalised xywh batch: x by WIDTH, y by HEIGHT (not the released loader's x / height)."""

from __future__ import annotations

import pytest
import torch
from tdfusion_yolo.targets import as_box_list, to_ultralytics_batch


def test_normalises_x_by_width_and_y_by_height_on_a_non_square_image():
    h, w = 100, 400
    boxes = [torch.tensor([[2.0, 40.0, 10.0, 120.0, 50.0]]), torch.zeros(0, 5), torch.tensor([[0.0, 0, 0, 400, 100]])]
    batch = to_ultralytics_batch(boxes, 3, h, w, num_classes=3)
    assert batch["batch_idx"].tolist() == [0.0, 2.0]
    assert batch["cls"].tolist() == [[2.0], [0.0]]
    # centre (80, 30), size (80, 40) in pixels
    torch.testing.assert_close(batch["bboxes"][0], torch.tensor([80 / w, 30 / h, 80 / w, 40 / h]))
    torch.testing.assert_close(batch["bboxes"][1], torch.tensor([0.5, 0.5, 1.0, 1.0]))


def test_round_trip_through_ultralytics_own_conversion():
    from ultralytics.utils.ops import xywh2xyxy

    torch.manual_seed(0)
    h, w = 96, 224
    xy0 = torch.rand(7, 2) * torch.tensor([w / 2, h / 2])
    xy1 = xy0 + 1 + torch.rand(7, 2) * torch.tensor([w / 2 - 1, h / 2 - 1])
    rows = torch.cat([torch.randint(0, 4, (7, 1)).float(), xy0, xy1], 1)
    batch = to_ultralytics_batch([rows], 1, h, w, num_classes=4)
    back = xywh2xyxy(batch["bboxes"]) * torch.tensor([w, h, w, h])  # what v8DetectionLoss.preprocess does
    torch.testing.assert_close(back, rows[:, 1:], rtol=1e-5, atol=1e-4)


def test_empty_and_none_targets():
    batch = to_ultralytics_batch([None, torch.zeros(0, 5)], 2, 32, 32)
    assert batch["batch_idx"].shape == (0,) and batch["cls"].shape == (0, 1) and batch["bboxes"].shape == (0, 4)
    assert len(as_box_list(None, 3)) == 3


def test_invalid_targets_are_reported():
    with pytest.raises(ValueError, match=r"outside 0\.\.0"):
        to_ultralytics_batch([torch.tensor([[1.0, 0, 0, 4, 4]])], 1, 8, 8, num_classes=1)
    with pytest.raises(ValueError, match="2 images but the batch has 1"):
        to_ultralytics_batch([torch.zeros(0, 5), torch.zeros(0, 5)], 1, 8, 8)
    with pytest.raises(ValueError, match="rows"):
        to_ultralytics_batch([torch.zeros(3, 4)], 1, 8, 8)
