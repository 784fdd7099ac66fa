"""Task ``mmdet``: any MMDetection model as the task network (RTMDet-tiny by default).

The detector is wrapped in :class:`DetectorNetwork`, which normalises the RGB input in the graph (mean / std /
channel order of the config's data preprocessor, zero padding to a multiple of 32) without calling mmdet's data
preprocessor, so the loss is differentiable with respect to the fused image. ``input_kind="luminance"`` feeds the
fused Y ``(B, 1, H, W)`` in [0, 1] to a one-channel stem instead (no mean / std), as the released TDFusion detector. Targets are core's pixel boxes
``(N, 5)`` rows ``class, x0, y0, x1, y1`` (one tensor per image, collated as a list). The loss is the detector's
``loss()`` dict summed over the entries whose key contains ``"loss"``; evaluation is COCO-style mAP50:95 / mAP50 /
mAP75 from :mod:`tdfusion_core.metrics.detection` (the same numbers as every other detection task of tdfusion).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn as nn
from tdfusion_openmmlab.glue import NormalizedModel, sum_losses
from tdfusion_openmmlab.task import OpenMMLabTask

from tdfusion_core.metrics.detection import DetectionMAP

#: short names for configs shipped in the mmdet wheel (``<mmdet>/.mim/configs``); any other name or path works too
MODEL_ZOO: dict[str, str] = {
    "rtmdet-tiny": "rtmdet/rtmdet_tiny_8xb32-300e_coco",
    "rtmdet-s": "rtmdet/rtmdet_s_8xb32-300e_coco",
    "yolox-tiny": "yolox/yolox_tiny_8xb8-300e_coco",
    "yolox-s": "yolox/yolox_s_8xb8-300e_coco",
    "retinanet-r50": "retinanet/retinanet_r50_fpn_1x_coco",
    "faster-rcnn-r50": "faster_rcnn/faster-rcnn_r50_fpn_1x_coco",
    "fcos-r50": "fcos/fcos_r50-caffe_fpn_gn-head_1x_coco",
}
DEFAULT_CONFIG = MODEL_ZOO["rtmdet-tiny"]


def boxes_to_instances(boxes: torch.Tensor, device: torch.device) -> Any:
    """mmdet ``InstanceData`` (``bboxes (N, 4)``, ``labels (N,)``) from core's ``(N, 5)`` pixel boxes."""
    from mmengine.structures import InstanceData

    boxes = torch.as_tensor(boxes).reshape(-1, 5).to(device)
    return InstanceData(bboxes=boxes[:, 1:5].float(), labels=boxes[:, 0].long())


class DetectorNetwork(NormalizedModel):
    """An MMDetection detector with in-graph normalisation.

    ``forward(images)`` returns per image ``(boxes (N, 4), scores (N,), labels (N,))`` in the image's pixels (the
    detector's ``predict`` with its own test_cfg: score threshold, NMS, max detections).
    """

    def data_samples(
        self, images: torch.Tensor, boxes: Sequence[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[Any]]:
        """Network input and ``DetDataSample`` list with the metainfo mmdet's preprocessor would set."""
        from mmdet.structures import DetDataSample

        # mmdet's preprocessor sets other metainfo than mmseg's (tdfusion_mmseg.task): alike in shape only.
        inputs = self.prepare(images)
        height, width = int(images.shape[-2]), int(images.shape[-1])
        padded = (int(inputs.shape[-2]), int(inputs.shape[-1]))
        samples = []
        for i in range(images.shape[0]):
            sample = DetDataSample(
                metainfo={
                    "ori_shape": (height, width),
                    "img_shape": (height, width),
                    "pad_shape": padded,
                    "batch_input_shape": padded,
                    "scale_factor": (1.0, 1.0),
                }
            )
            if boxes is not None:
                sample.gt_instances = boxes_to_instances(boxes[i], images.device)
            samples.append(sample)
        return inputs, samples

    def loss(self, images: torch.Tensor, boxes: Sequence[torch.Tensor]) -> torch.Tensor:
        """Sum of the detector's loss terms on ``images`` in [0, 1] against per-image pixel boxes."""
        if len(boxes) != images.shape[0]:
            raise ValueError(f"{len(boxes)} box tensors for a batch of {images.shape[0]} images")
        inputs, samples = self.data_samples(images, boxes)
        return sum_losses(self.model.loss(inputs, samples))

    def forward(self, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        inputs, samples = self.data_samples(images)
        results = self.model.predict(inputs, samples, rescale=False)
        return [(r.pred_instances.bboxes, r.pred_instances.scores, r.pred_instances.labels) for r in results]


class MMDetTask(OpenMMLabTask):
    """Object detection with any MMDetection model.

    Options (keyword arguments, also from a run's YAML) as :class:`~tdfusion_openmmlab.task.OpenMMLabTask`:
        config: a config file path, a name from :data:`MODEL_ZOO` (``"rtmdet-tiny"``, ``"yolox-tiny"``,
            ``"retinanet-r50"``, ``"faster-rcnn-r50"``, ...), the name of any config shipped with mmdet (e.g.
            ``"rtmdet/rtmdet_tiny_8xb32-300e_coco"``), or a dict. Default: RTMDet-tiny.
        cfg_options: mmengine-style dotted overrides, e.g. ``{"model.test_cfg.score_thr": 0.05}``.
        input_kind: ``"rgb"`` (default) or ``"luminance"`` (one-channel stem, no mean / std).
        size_divisor: pad the input to a multiple of this (default: the config's ``pad_size_divisor``, at least 32
            so that every FPN level lines up).
        unfreeze: release ``frozen_stages`` / ``norm_eval`` when no pretrained weights are loaded (default True).

    ``num_classes`` (from the dataset) sets the heads' class count; ``None`` keeps the config's (80 for COCO).
    ``checkpoint`` loads local weights (mmdet checkpoints or state dicts; heads of another class count skipped).
    """

    name = "mmdet"
    input_kind = "rgb"
    target_kind = "boxes"
    #: the released code's detection task input (M3FD, 192x256)
    default_input_size = (192, 256)
    package: ClassVar[str] = "mmdet"
    network_class = DetectorNetwork
    min_size_divisor: ClassVar[int] = 32
    model_kind: ClassVar[str] = "detection model"

    def default_config(self) -> Any:
        return DEFAULT_CONFIG

    def resolve_config_name(self, config: Any) -> Any:
        """A :data:`MODEL_ZOO` short name becomes its shipped config name."""
        return MODEL_ZOO[config] if isinstance(config, str) and config in MODEL_ZOO else config

    def model_num_classes(self, model: nn.Module) -> int:
        return _model_num_classes(model)

    def compute_loss(self, network: nn.Module, images: torch.Tensor, targets: Any) -> torch.Tensor:
        return network.loss(images, list(targets))  # type: ignore[operator]

    @torch.no_grad()
    def evaluate(self, network: nn.Module, batches: Iterable[tuple[torch.Tensor, Any]]) -> dict[str, float]:
        """COCO-style ``mAP50:95``, ``mAP50``, ``mAP75`` and per class ``AP50.<c>``, ``AP75.<c>``, ``AP50:95.<c>``.

        Detections are the detector's own ``predict`` output (its test_cfg: score threshold, NMS, at most
        ``max_per_img``), scored with :class:`tdfusion_core.metrics.detection.DetectionMAP` (at most 100 per image).
        """
        num_classes = self.num_classes or _model_num_classes(network.model)  # type: ignore[arg-type]
        metric = DetectionMAP(num_classes=int(num_classes))
        for images, targets in batches:  # eval mode: the Task base class wraps evaluate
            rows = [
                torch.cat([labels[:, None].to(boxes.dtype), boxes, scores[:, None].to(boxes.dtype)], 1)
                for boxes, scores, labels in network(images)
            ]
            metric.update(rows, [torch.as_tensor(t).reshape(-1, 5) for t in targets])
        return metric.compute()


def _model_num_classes(model: nn.Module) -> int:
    for path in ("bbox_head", "roi_head.bbox_head"):
        node: Any = model
        for part in path.split("."):
            node = getattr(node, part, None)
        if node is not None and hasattr(node, "num_classes"):
            return int(node.num_classes)
    raise ValueError("cannot tell the detector's class count; pass num_classes")
