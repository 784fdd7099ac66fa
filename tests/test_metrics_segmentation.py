"""Segmentation metrics (ConfusionMatrix): a hand-computed case, ignore index, absent classes, errors."""

from __future__ import annotations

import math

import pytest
import torch

from tdfusion_core.metrics.segmentation import ConfusionMatrix


def test_hand_computed_iou_and_accuracy():
    # ground truth / prediction over 8 pixels, 3 classes; class 2 appears in neither -> NaN, left out of the means
    target = torch.tensor([[0, 0, 0, 1], [1, 1, 255, 255]])
    pred = torch.tensor([[0, 0, 1, 1], [1, 0, 2, 0]])
    cm = ConfusionMatrix(num_classes=3)
    cm.update(pred, target)
    # valid pixels: gt 0 -> pred 0,0,1 ; gt 1 -> pred 1,1,0
    assert cm.matrix.tolist() == [[2, 1, 0], [1, 2, 0], [0, 0, 0]]
    out = cm.compute()
    assert out["IoU.0"] == pytest.approx(2 / 4) and out["IoU.1"] == pytest.approx(2 / 4)
    assert out["Acc.0"] == pytest.approx(2 / 3) and out["Acc.1"] == pytest.approx(2 / 3)
    assert math.isnan(out["IoU.2"]) and math.isnan(out["Acc.2"])
    assert out["mIoU"] == pytest.approx(0.5)
    assert out["mAcc"] == pytest.approx(2 / 3)
    assert out["aAcc"] == pytest.approx(4 / 6)


def test_accumulates_over_updates_and_perfect_prediction():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (2, 16, 16), generator=g)
    cm = ConfusionMatrix(num_classes=4)
    cm.update(target[0], target[0])
    cm.update(target[1], target[1])
    out = cm.compute()
    assert out["mIoU"] == 1.0 and out["mAcc"] == 1.0 and out["aAcc"] == 1.0
    assert float(cm.matrix.sum()) == 2 * 16 * 16


def test_predicted_but_absent_class_has_zero_iou():
    cm = ConfusionMatrix(num_classes=2)
    cm.update(torch.tensor([1, 1]), torch.tensor([0, 0]))
    out = cm.compute()
    assert out["IoU.0"] == 0.0 and out["IoU.1"] == 0.0  # class 1 predicted, never true: IoU 0, not NaN
    assert math.isnan(out["Acc.1"])  # no ground truth of class 1: recall undefined


def test_errors():
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(num_classes=0)
    cm = ConfusionMatrix(num_classes=2)
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(2, 2), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="out of range"):
        cm.update(torch.zeros(2), torch.tensor([0, 5]))
