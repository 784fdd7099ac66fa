"""Detection mAP: a case computed by hand, and the builtin backend against pycocotools on random cases."""

from __future__ import annotations

import math

import pytest
import torch

from tdfusion_core.metrics.detection import DetectionMAP, box_iou, detection_map


def _hand_case() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Class 0: three ground-truth boxes in two images; an exact hit (0.9), a false positive (0.8) and a hit of
    IoU 100 / 160 = 0.625 (0.7). Class 1: one ground-truth box, never predicted. Class 2: predicted, never present."""
    gts = [
        torch.tensor([[0, 0, 0, 10, 10], [0, 20, 20, 30, 30], [1, 50, 50, 60, 60]], dtype=torch.float32),
        torch.tensor([[0, 0, 0, 10, 10]], dtype=torch.float32),
    ]
    preds = [
        torch.tensor(
            [
                [0, 0, 0, 10, 10, 0.9],
                [0, 100, 100, 110, 110, 0.8],
                [0, 20, 20, 30, 36, 0.7],
                [2, 0, 0, 5, 5, 0.95],
            ]
        ),
        torch.zeros(0, 6),
    ]
    return preds, gts


def test_hand_computed_case():
    """Ranked class-0 detections: TP, FP, TP (IoU 0.625). With 3 ground-truth boxes:

    * IoU <= 0.625 (thresholds 0.50, 0.55, 0.60): recall 1/3, 1/3, 2/3 and monotone precision 1, 2/3, 2/3, so the
      101 recall points 0..0.33 read 1 and 0.34..0.66 read 2/3: AP = (34 + 33 * 2/3) / 101 = 56 / 101.
    * IoU > 0.625 (0.65 .. 0.95, 7 thresholds): only the first hit counts; AP = 34 / 101.
    Class 1 has AP 0 at every threshold; class 2 has no ground truth and is left out.
    """
    preds, gts = _hand_case()
    out = detection_map(preds, gts)
    ap50_c0, ap_hi_c0 = 56 / 101, 34 / 101
    assert out["AP50.0"] == pytest.approx(ap50_c0, abs=1e-12)
    assert out["AP75.0"] == pytest.approx(ap_hi_c0, abs=1e-12)
    assert out["AP50:95.0"] == pytest.approx((3 * ap50_c0 + 7 * ap_hi_c0) / 10, abs=1e-12)
    assert out["AP50.1"] == 0.0 and out["AP50:95.1"] == 0.0
    assert math.isnan(out["AP50.2"])
    assert out["mAP50"] == pytest.approx(ap50_c0 / 2, abs=1e-12)
    assert out["mAP75"] == pytest.approx(ap_hi_c0 / 2, abs=1e-12)
    assert out["mAP50:95"] == pytest.approx((3 * ap50_c0 + 7 * ap_hi_c0) / 20, abs=1e-12)


def test_hand_case_with_pycocotools():
    preds, gts = _hand_case()
    ours = detection_map(preds, gts)
    ref = detection_map(preds, gts, backend="pycocotools")
    assert ref.keys() == ours.keys()
    for key, value in ours.items():
        assert ref[key] == pytest.approx(value, abs=1e-12, nan_ok=True), key


def test_perfect_predictions_score_one_and_no_predictions_score_zero():
    gts = [torch.tensor([[0, 1, 1, 9, 9], [1, 3, 4, 20, 30]], dtype=torch.float32)]
    perfect = [torch.cat([gts[0], torch.tensor([[0.9], [0.8]])], dim=1)]
    assert detection_map(perfect, gts)["mAP50:95"] == pytest.approx(1.0)
    none = detection_map([torch.zeros(0, 6)], gts)
    assert none["mAP50"] == 0.0 and none["mAP50:95"] == 0.0
    empty = detection_map([torch.zeros(0, 6)], [torch.zeros(0, 5)])
    assert math.isnan(empty["mAP50"])


def _random_case(seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    preds, gts = [], []
    for image in range(6):
        n = int(torch.randint(0, 6, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * 200
        wh = 5 + torch.rand(n, 2, generator=g) * 60
        cls = torch.randint(0, 3, (n, 1), generator=g).float()
        gt = torch.cat([cls, xy, xy + wh], dim=1)
        # jittered copies of the ground truth (some with the wrong class), plus clutter
        jitter = gt.clone()
        jitter[:, 1:] += torch.randn(n, 4, generator=g) * 3
        jitter[:, 3:5] = torch.maximum(jitter[:, 3:5], jitter[:, 1:3] + 1)
        wrong = torch.rand(n, generator=g) < 0.2
        jitter[wrong, 0] = (jitter[wrong, 0] + 1) % 3
        k = 120 if image == 0 else int(torch.randint(0, 8, (1,), generator=g))  # image 0 exceeds maxDets
        cxy = torch.rand(k, 2, generator=g) * 200
        clutter = torch.cat(
            [torch.randint(0, 3, (k, 1), generator=g).float(), cxy, cxy + 5 + torch.rand(k, 2, generator=g) * 60], 1
        )
        boxes = torch.cat([jitter, clutter])
        # scores on a coarse grid so ties occur and the stable ordering is exercised; hits tend to score higher
        scores = (
            torch.cat([torch.randint(6, 21, (n, 1), generator=g), torch.randint(1, 15, (k, 1), generator=g)]).float()
            / 20
        )
        preds.append(torch.cat([boxes, scores], dim=1))
        gts.append(gt)
    return preds, gts


@pytest.mark.parametrize("seed", range(5))
def test_builtin_matches_pycocotools_on_random_cases(seed):
    preds, gts = _random_case(seed)
    ours = detection_map(preds, gts, num_classes=3)
    ref = detection_map(preds, gts, num_classes=3, backend="pycocotools")
    for key, value in ours.items():
        assert ref[key] == pytest.approx(value, abs=1e-12, nan_ok=True), key
    assert 0 < ours["mAP50:95"] < ours["mAP50"] < 1


def test_accumulating_batches_equals_one_shot():
    preds, gts = _random_case(7)
    metric = DetectionMAP(num_classes=3)
    metric.update(preds[:3], gts[:3])
    metric.update(preds[3:], gts[3:])
    assert metric.compute() == pytest.approx(detection_map(preds, gts, num_classes=3), nan_ok=True)


def test_box_iou_and_input_errors():
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[5.0, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
    assert box_iou(a, b)[0].tolist() == pytest.approx([50 / 150, 0.0, 1.0])
    with pytest.raises(ValueError, match=r"predictions of image 0 must be \(N, 6\)"):
        detection_map([torch.zeros(2, 5)], [torch.zeros(0, 5)])
    with pytest.raises(ValueError, match="2 prediction tensors for 1"):
        detection_map([torch.zeros(0, 6)] * 2, [torch.zeros(0, 5)])
    with pytest.raises(ValueError, match="NaN"):
        detection_map([torch.tensor([[0, 0, 0, 1, 1, float("nan")]])], [torch.zeros(0, 5)])
    with pytest.raises(ValueError, match="x1 < x0"):
        detection_map([torch.zeros(0, 6)], [torch.tensor([[0, 5, 0, 1, 1]])])
    with pytest.raises(ValueError, match="backend"):
        DetectionMAP(backend="nope")  # type: ignore[arg-type]
