"""Segmentation metrics from a confusion matrix: IoU and accuracy per class, their means (mIoU, mAcc), pixel accuracy.

Definitions follow MMSegmentation's ``IoUMetric``: IoU_c = TP / (TP + FP + FN), Acc_c = TP / (TP + FN) (per-class
recall); classes absent from both prediction and ground truth (NaN) are left out of the means. Pixels labelled
``ignore_index`` are not counted.
"""

from __future__ import annotations

import torch


class ConfusionMatrix:
    """Accumulates a ``num_classes x num_classes`` confusion matrix (rows: ground truth, columns: prediction)."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.float64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add predicted class indices and ground truth of the same shape."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        valid = target != self.ignore_index
        t = target[valid].long().cpu()
        p = pred[valid].long().cpu()
        if t.numel() and int(t.max()) >= self.num_classes:
            raise ValueError(f"target class {int(t.max())} out of range for {self.num_classes} classes")
        idx = t * self.num_classes + p.clamp(0, self.num_classes - 1)
        self.matrix += torch.bincount(idx, minlength=self.num_classes**2).reshape(self.num_classes, -1).double()

    def compute(self) -> dict[str, float]:
        """``mIoU``, ``mAcc``, ``aAcc`` and per class ``IoU.<c>``, ``Acc.<c>`` (NaN for absent classes)."""
        m = self.matrix
        tp = m.diag()
        gt = m.sum(1)
        pred = m.sum(0)
        iou = tp / (gt + pred - tp)
        acc = tp / gt
        out = {
            "mIoU": float(torch.nanmean(iou)),
            "mAcc": float(torch.nanmean(acc)),
            "aAcc": float(tp.sum() / m.sum().clamp_min(1)),
        }
        for c in range(self.num_classes):
            out[f"IoU.{c}"] = float(iou[c])
            out[f"Acc.{c}"] = float(acc[c])
        return out
