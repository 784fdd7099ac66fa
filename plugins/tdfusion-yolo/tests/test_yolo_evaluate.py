"""Evaluation through ultralytics' NMS, matching and DetMetrics, checked on detections with known answers."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from tdfusion_yolo.task import YoloTask
from yolo_testutils import load_pairs


class FixedDetector(nn.Module):
    """Stands in for a YOLO model in eval mode: returns preset detections in ultralytics' raw inference layout
    ``(B, 4 + nc, anchors)`` (centre-x, centre-y, w, h, class scores), so the whole NMS + metric path is exercised."""

    stride = torch.tensor([8.0, 16.0, 32.0])

    def __init__(self, detections: list[list[tuple[float, float, float, float, float, int]]], nc: int) -> None:
        super().__init__()
        self.detections, self.nc = detections, nc
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = max(1, *(len(d) for d in self.detections))
        out = torch.zeros(x.shape[0], 4 + self.nc, n)
        for i, dets in enumerate(self.detections):
            for j, (x0, y0, x1, y1, conf, cls) in enumerate(dets):
                out[i, :4, j] = torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0])
                out[i, 4 + cls, j] = conf
        return out


def _evaluate(detections, gts, nc=1, size=(64, 96)):
    task = YoloTask(input_kind="rgb", num_classes=nc)
    images = torch.zeros(len(gts), 3, *size)
    return task.evaluate(FixedDetector(detections, nc), [(images, [torch.tensor(g).reshape(-1, 5) for g in gts])])


GT = [[0.0, 10, 10, 40, 50], [0.0, 50, 5, 90, 60]]
#: AP of a perfect ranking in ultralytics' compute_ap: the precision envelope is 1 up to recall 1, where a sentinel
#: (recall 1, precision 0) is appended; integrating np.interp over 101 recall points with the trapezoid rule loses
#: half of the last 0.01-wide step: 1 - 0.005
PERFECT = 0.995


def test_perfect_detections_score_one():
    dets = [[(10, 10, 40, 50, 0.9, 0), (50, 5, 90, 60, 0.8, 0)]]
    m = _evaluate(dets, [GT])
    assert set(m) == {"mAP50", "mAP75", "mAP50:95", "precision", "recall"}
    for key in ("mAP50", "mAP75", "mAP50:95"):
        assert m[key] == pytest.approx(PERFECT, abs=1e-6), (key, m)
    assert m["precision"] == pytest.approx(1.0, abs=1e-3) and m["recall"] == pytest.approx(1.0, abs=1e-3)


def test_map_keys_are_the_ones_core_and_mmdet_report():
    from tdfusion_core.metrics.detection import DetectionMAP

    metric = DetectionMAP(num_classes=1)
    metric.update([torch.tensor([[0.0, 10, 10, 40, 50, 0.9]])], [torch.tensor([GT[0]])])
    core = {key for key in metric.compute() if key.startswith("mAP")}
    m = _evaluate([[(10, 10, 40, 50, 0.9, 0)]], [[GT[0]]])
    assert core == {"mAP50", "mAP75", "mAP50:95"} and core <= set(m)


def test_iou_of_0_62_counts_at_0_50_to_0_60_only():
    # predicted box shifted right: IoU = (30 - d) * 40 / ((30 + d) * 40) = 0.62  =>  d = 30 * 0.38 / 1.62
    d = 30 * 0.38 / 1.62
    m = _evaluate([[(10 + d, 10, 40 + d, 50, 0.9, 0)]], [[GT[0]]])
    assert m["mAP50"] == pytest.approx(PERFECT, abs=1e-6)
    assert m["mAP75"] == pytest.approx(0.0, abs=1e-6)
    assert m["mAP50:95"] == pytest.approx(0.3 * PERFECT, abs=1e-6)  # 3 of the 10 thresholds 0.50, 0.55, 0.60


def test_a_more_confident_false_positive_halves_the_precision():
    m = _evaluate([[(60, 20, 90, 60, 0.95, 0), (10, 10, 40, 50, 0.5, 0)]], [[GT[0]]])
    assert m["mAP50"] == pytest.approx(0.5, abs=0.02)
    assert m["recall"] == pytest.approx(1.0, abs=1e-3)


def test_classes_are_matched_per_class_and_averaged():
    gts = [[[0.0, 10, 10, 40, 50], [1.0, 50, 5, 90, 60]]]
    wrong_class = _evaluate([[(10, 10, 40, 50, 0.9, 1)]], [[GT[0]]], nc=2)
    assert wrong_class["mAP50"] == 0.0
    half = _evaluate([[(10, 10, 40, 50, 0.9, 0)]], gts, nc=2)  # class 0 found, class 1 missed
    assert half["mAP50"] == pytest.approx(PERFECT / 2, abs=1e-6)


def test_boxes_are_in_pixels_of_non_square_images():
    """x and y are not swapped or rescaled: a box far right in a wide image is found where it is."""
    gt = [[0.0, 250, 10, 310, 40]]
    m = _evaluate([[(250, 10, 310, 40, 0.9, 0)]], [gt], size=(64, 320))
    assert m["mAP50:95"] == pytest.approx(PERFECT, abs=1e-6)


def test_several_batches_accumulate():
    task = YoloTask(input_kind="rgb", num_classes=1)
    det = FixedDetector([[(10, 10, 40, 50, 0.9, 0)]], 1)
    batches = [
        (torch.zeros(1, 3, 64, 96), [torch.tensor([GT[0]])]),
        (torch.zeros(1, 3, 64, 96), [torch.tensor([GT[1]])]),
    ]
    m = task.evaluate(det, batches)  # the second image's object is missed: recall 1/2
    assert m["recall"] == pytest.approx(0.5, abs=1e-3)


def test_real_network_on_llvip_val_restores_training_mode(base_task):
    net = base_task.network.train()
    images, boxes = load_pairs("LLVIP", "val", count=2)
    m = base_task.evaluate(net, [(images, boxes)])
    assert net.training
    assert all(0.0 <= m[k] <= 1.0 for k in ("mAP50", "mAP75", "mAP50:95"))
    assert m["mAP50"] >= m["mAP75"] and m["mAP50"] >= m["mAP50:95"]
    detections = base_task.predict(net, images)
    assert len(detections) == 2 and all(d.shape[1] == 6 for d in detections)


@pytest.mark.parametrize("start_training", [True, False])
def test_evaluate_and_predict_run_in_eval_mode_and_restore_the_mode(start_training):
    """The Task base class wraps evaluate (the plugin no longer switches modes itself); predict switches on its own."""
    seen: list[bool] = []

    class ModeRecorder(FixedDetector):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(self.training)
            return super().forward(x)

    task = YoloTask(input_kind="rgb", num_classes=1)
    det = ModeRecorder([[(10, 10, 40, 50, 0.9, 0)]], 1).train(start_training)
    images = torch.zeros(1, 3, 64, 96)
    m = task.evaluate(det, [(images, [torch.tensor([GT[0]])])])
    assert m["mAP50"] == pytest.approx(PERFECT, abs=1e-6)
    assert seen == [False] and det.training is start_training
    task.predict(det, images)
    assert seen == [False, False] and det.training is start_training
