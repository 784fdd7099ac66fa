"""Detection metrics: COCO-style box mAP50, mAP75 and mAP50:95 (overall and per class).

Boxes use core's format (see :mod:`tdfusion_core.data.targets`): ground truth per image is a ``Tensor (M, 5)`` of rows
``class, x0, y0, x1, y1`` in pixels; predictions per image are ``Tensor (N, 6)`` rows ``class, x0, y0, x1, y1, score``.

The numbers are those of pycocotools' ``COCOeval`` for ``iouType="bbox"``, area range "all" and ``maxDets=100``:

* per image and class, detections are taken by decreasing score (at most 100), and each is matched greedily to the
  not-yet-matched ground-truth box of highest IoU, if that IoU reaches the threshold;
* per class, the detections of all images are ranked by score; precision is made monotone (the running maximum from
  the right) and read at the 101 recall points 0, 0.01, ..., 1 (the first rank whose recall reaches each point, 0 when
  none does); AP is their mean;
* mAP averages AP over the classes that have ground truth (classes seen only in predictions are left out, as COCO
  does), at IoU 0.5 (mAP50), 0.75 (mAP75) and over 0.50:0.05:0.95 (mAP50:95).

Two backends compute them: ``"builtin"`` (default, plain torch, no extra dependency) and ``"pycocotools"`` (the
reference itself; ``pip install tdfusion-core[detection]``). ``tests/test_metrics_detection.py`` checks that they
agree on random cases and checks the builtin one against a case computed by hand.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any, Literal

import torch

__all__ = ["COCO_IOU_THRESHOLDS", "DetectionMAP", "box_iou", "detection_map"]

#: IoU thresholds of COCO's mAP50:95.
COCO_IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
_RECALL_POINTS = torch.linspace(0, 1, 101, dtype=torch.float64)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix ``(N, M)`` of ``x0, y0, x1, y1`` boxes ``a (N, 4)`` and ``b (M, 4)`` (areas ``w * h``, as COCO)."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    iw = (torch.minimum(a[:, None, 2], b[None, :, 2]) - torch.maximum(a[:, None, 0], b[None, :, 0])).clamp_min(0)
    ih = (torch.minimum(a[:, None, 3], b[None, :, 3]) - torch.maximum(a[:, None, 1], b[None, :, 1])).clamp_min(0)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(
        union > 0, inter / torch.where(union > 0, union, torch.ones_like(union)), torch.zeros_like(inter)
    )


def _check(t: torch.Tensor, cols: int, what: str, index: int) -> torch.Tensor:
    t = torch.as_tensor(t).detach().to("cpu", torch.float64)
    if t.numel() == 0:
        return t.reshape(0, cols)
    if t.ndim != 2 or t.shape[1] != cols:
        raise ValueError(f"{what} of image {index} must be (N, {cols}), got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{what} of image {index} contain NaN or infinite values")
    if bool(((t[:, 3] < t[:, 1]) | (t[:, 4] < t[:, 2])).any()):
        raise ValueError(f"{what} of image {index} contain boxes with x1 < x0 or y1 < y0 (expected x0, y0, x1, y1)")
    return t


class DetectionMAP:
    """Accumulates predictions and ground truth image by image; :meth:`compute` returns the COCO-style metrics.

    ``num_classes`` (optional) fixes the per-class keys to ``0 .. num_classes - 1``; otherwise they are the classes
    seen in ground truth or predictions. ``max_detections`` is COCO's ``maxDets`` (per image and class).
    """

    def __init__(
        self,
        num_classes: int | None = None,
        max_detections: int = 100,
        backend: Literal["builtin", "pycocotools"] = "builtin",
    ) -> None:
        if backend not in ("builtin", "pycocotools"):
            raise ValueError(f"backend must be 'builtin' or 'pycocotools', not {backend!r}")
        self.num_classes = num_classes
        self.max_detections = max_detections
        self.backend = backend
        self.predictions: list[torch.Tensor] = []
        self.ground_truths: list[torch.Tensor] = []

    def update(self, predictions: Sequence[torch.Tensor], ground_truths: Sequence[torch.Tensor]) -> None:
        """Add a batch: per image, predictions ``(N, 6)`` and ground truth ``(M, 5)`` (see the module docstring)."""
        if len(predictions) != len(ground_truths):
            raise ValueError(f"{len(predictions)} prediction tensors for {len(ground_truths)} ground-truth tensors")
        start = len(self.predictions)
        for i, (p, g) in enumerate(zip(predictions, ground_truths), start=start):
            self.predictions.append(_check(p, 6, "predictions", i))
            self.ground_truths.append(_check(g, 5, "ground truth", i))

    def _classes(self) -> list[int]:
        if self.num_classes is not None:
            return list(range(self.num_classes))
        seen = {int(c) for t in (*self.predictions, *self.ground_truths) for c in t[:, 0].tolist()}
        return sorted(seen)

    def compute(self) -> dict[str, float]:
        """``mAP50``, ``mAP75``, ``mAP50:95`` and per class ``AP50.<c>``, ``AP75.<c>``, ``AP50:95.<c>``.

        A class without ground truth has NaN AP and is left out of the means; the means are NaN when no class has
        ground truth.
        """
        classes = self._classes()
        ap = self._ap_builtin(classes) if self.backend == "builtin" else self._ap_pycocotools(classes)
        # ap: (C, T) with NaN for classes without ground truth
        out: dict[str, float] = {}
        valid = ~torch.isnan(ap[:, 0]) if len(classes) else torch.zeros(0, dtype=torch.bool)
        t50, t75 = COCO_IOU_THRESHOLDS.index(0.5), COCO_IOU_THRESHOLDS.index(0.75)
        if bool(valid.any()):
            out["mAP50"] = float(ap[valid, t50].mean())
            out["mAP75"] = float(ap[valid, t75].mean())
            out["mAP50:95"] = float(ap[valid].mean())
        else:
            out["mAP50"] = out["mAP75"] = out["mAP50:95"] = float("nan")
        for i, c in enumerate(classes):
            out[f"AP50.{c}"] = float(ap[i, t50])
            out[f"AP75.{c}"] = float(ap[i, t75])
            out[f"AP50:95.{c}"] = float(ap[i].mean())
        return out

    # ------------------------------------------------------------------------------------------------ builtin backend
    def _match(self, dets: torch.Tensor, gts: torch.Tensor) -> torch.Tensor:
        """Greedy COCO matching: ``(T, D)`` bool, whether each detection (already score-sorted) is a true positive."""
        thresholds = COCO_IOU_THRESHOLDS
        matched = torch.zeros(len(thresholds), len(dets), dtype=torch.bool)
        if len(dets) == 0 or len(gts) == 0:
            return matched
        ious = box_iou(dets[:, 1:5], gts[:, 1:5]).tolist()
        for ti, t in enumerate(thresholds):
            taken = [False] * len(gts)
            for d, row in enumerate(ious):
                best, m = min(t, 1 - 1e-10), -1
                for g, iou in enumerate(row):
                    if taken[g] or iou < best:
                        continue
                    best, m = iou, g
                if m >= 0:
                    taken[m] = True
                    matched[ti, d] = True
        return matched

    def _ap_builtin(self, classes: list[int]) -> torch.Tensor:
        n_t = len(COCO_IOU_THRESHOLDS)
        ap = torch.full((len(classes), n_t), float("nan"), dtype=torch.float64)
        for ci, c in enumerate(classes):
            scores, tps, n_gt = [], [], 0
            for preds, gts in zip(self.predictions, self.ground_truths):
                g = gts[gts[:, 0] == c]
                p = preds[preds[:, 0] == c]
                order = torch.sort(-p[:, 5], stable=True).indices[: self.max_detections]
                p = p[order]
                n_gt += len(g)
                scores.append(p[:, 5])
                tps.append(self._match(p, g))
            if n_gt == 0:
                continue
            all_scores = torch.cat(scores)
            tp = torch.cat(tps, dim=1)
            if tp.shape[1] == 0:
                ap[ci] = 0.0
                continue
            order = torch.sort(-all_scores, stable=True).indices
            tp = tp[:, order].to(torch.float64)
            tp_cum = tp.cumsum(dim=1)
            fp_cum = (1 - tp).cumsum(dim=1)
            recall = tp_cum / n_gt
            precision = tp_cum / (tp_cum + fp_cum + torch.finfo(torch.float64).eps)
            # monotone precision envelope: running maximum from the right
            precision = precision.flip(1).cummax(dim=1).values.flip(1)
            for ti in range(n_t):
                idx = torch.searchsorted(recall[ti].contiguous(), _RECALL_POINTS, side="left")
                inside = idx < recall.shape[1]
                q = torch.where(
                    inside,
                    precision[ti, idx.clamp_max(recall.shape[1] - 1)],
                    torch.zeros_like(idx, dtype=torch.float64),
                )
                ap[ci, ti] = q.mean()
        return ap

    # -------------------------------------------------------------------------------------------- pycocotools backend
    def _ap_pycocotools(self, classes: list[int]) -> torch.Tensor:
        try:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval
        except ImportError as exc:
            raise ImportError(
                "backend='pycocotools' needs pycocotools: pip install 'tdfusion-core[detection]'"
            ) from exc
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        for image_id, (preds, gts) in enumerate(zip(self.predictions, self.ground_truths)):
            images.append({"id": image_id})
            for row in gts.tolist():
                w, h = row[3] - row[1], row[4] - row[2]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": int(row[0]),
                        "bbox": [row[1], row[2], w, h],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
            for row in preds.tolist():
                results.append(
                    {
                        "image_id": image_id,
                        "category_id": int(row[0]),
                        "bbox": [row[1], row[2], row[3] - row[1], row[4] - row[2]],
                        "score": row[5],
                    }
                )
        n_t = len(COCO_IOU_THRESHOLDS)
        ap = torch.full((len(classes), n_t), float("nan"), dtype=torch.float64)
        if not annotations:
            return ap
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO()
            gt.dataset = {"images": images, "annotations": annotations, "categories": [{"id": c} for c in classes]}
            gt.createIndex()
            if not results:
                for ci, c in enumerate(classes):
                    if any(a["category_id"] == c for a in annotations):
                        ap[ci] = 0.0
                return ap
            dt = gt.loadRes(results)
            ev = COCOeval(gt, dt, iouType="bbox")
            ev.params.catIds = classes
            ev.params.maxDets = [1, 10, self.max_detections]
            ev.evaluate()
            ev.accumulate()
        # precision: (T, R, K, A, M); area "all" = 0, maxDets index 2; -1 marks classes without ground truth
        prec = torch.as_tensor(ev.eval["precision"][:, :, :, 0, 2], dtype=torch.float64)
        for ci in range(len(classes)):
            p = prec[:, :, ci]
            if bool((p > -1).any()):
                ap[ci] = p.mean(dim=1)
        return ap


def detection_map(
    predictions: Sequence[torch.Tensor],
    ground_truths: Sequence[torch.Tensor],
    num_classes: int | None = None,
    backend: Literal["builtin", "pycocotools"] = "builtin",
    max_detections: int = 100,
) -> dict[str, float]:
    """One-shot COCO-style mAP of per-image predictions ``(N, 6)`` against ground truth ``(M, 5)``.

    Returns ``mAP50``, ``mAP75``, ``mAP50:95`` and per-class ``AP50.<c>``, ``AP75.<c>``, ``AP50:95.<c>``
    (see :class:`DetectionMAP`).
    """
    metric = DetectionMAP(num_classes=num_classes, max_detections=max_detections, backend=backend)
    metric.update(predictions, ground_truths)
    return metric.compute()
