"""Tasks ``mmseg`` (any MMSegmentation model) and ``segformer`` (SegFormer mit-b0 … b5).

The network is the MMSegmentation segmentor wrapped in :class:`SegmentorNetwork`, which prepares the input in the
graph (the segmentor's data preprocessor is not used), so ``compute_loss`` is differentiable with respect to the
fused image. Input: ``segformer`` takes the fused luminance ``(B, 1, H, W)`` by default, as the released TDFusion
SegFormer (``in_chans=1``, no mean / std); ``mmseg`` takes RGB by default; both accept ``input_kind``.

Loss (``loss_resolution``):

* ``"full"`` (default, the released code's ``CE_Loss``): the masks keep their native resolution
  (:meth:`MMSegTask.resize_targets` leaves them as loaded); the decode head's logits are upsampled bilinearly with
  ``align_corners=True`` to the input size (the released ``SegFormer.forward``) and again to the mask size, and the
  head's own loss modules (cross-entropy for SegFormer; ignore index 255) are applied there. Auxiliary heads, if
  any, are treated the same way. Pixel samplers (OHEM) are not applied in this mode.
* ``"task"``: masks are resized (nearest) to the task input size and the segmentor's own ``loss()`` is used (its
  decode / auxiliary heads upsample their logits to that size with their ``align_corners``).

Evaluation: mIoU / mAcc / aAcc and per-class IoU / Acc, at the masks' resolution (logits upsampled bilinearly with
``align_corners=True`` when it differs from the input's).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as nnf
from tdfusion_openmmlab.glue import NormalizedModel, sum_losses
from tdfusion_openmmlab.task import OpenMMLabTask

from tdfusion_core.metrics.segmentation import ConfusionMatrix

#: SegFormer variants -> config shipped in the mmsegmentation wheel (ADE20K 512x512 schedule; only the model is used)
SEGFORMER_CONFIGS: dict[str, str] = {
    f"b{i}": f"segformer/segformer_mit-b{i}_8xb2-160k_ade20k-512x512" for i in range(6)
}
DEFAULT_CONFIG = SEGFORMER_CONFIGS["b0"]
LOSS_RESOLUTIONS = ("full", "task")


def upsample(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear, ``align_corners=True`` (the released ``CE_Loss`` and ``SegFormer.forward``); a no-op at ``size``."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return nnf.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=True)


class SegmentorNetwork(NormalizedModel):
    """An MMSegmentation segmentor with in-graph input preparation; ``forward(images)`` gives logits ``(B, C, H, W)``."""

    ignore_index: int = 255

    def data_samples(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> tuple[torch.Tensor, list[Any]]:
        """Network input and ``SegDataSample`` list (padded masks with 255, metainfo as mmseg's preprocessor sets)."""
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample

        inputs = self.prepare(images)
        height, width = int(images.shape[-2]), int(images.shape[-1])
        pad_h, pad_w = self.padding(height, width)
        padded = (int(inputs.shape[-2]), int(inputs.shape[-1]))
        samples = []
        for i in range(images.shape[0]):
            sample = SegDataSample(
                metainfo={
                    "ori_shape": (height, width),
                    "img_shape": padded,
                    "pad_shape": padded,
                    "padding_size": [0, pad_w, 0, pad_h],
                }
            )
            if masks is not None:
                mask = masks[i].long()
                if pad_h or pad_w:
                    mask = nnf.pad(mask, (0, pad_w, 0, pad_h), value=self.ignore_index)
                sample.gt_sem_seg = PixelData(data=mask[None])
            samples.append(sample)
        return inputs, samples

    def loss(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Sum of the segmentor's own loss terms on ``images`` against masks ``(B, H, W)`` of the image size."""
        if tuple(masks.shape[-2:]) != tuple(images.shape[-2:]):
            raise ValueError(f"mask size {tuple(masks.shape[-2:])} != image size {tuple(images.shape[-2:])}")
        inputs, samples = self.data_samples(images, masks)
        return sum_losses(self.model.loss(inputs, samples))

    def head_logits(self, images: torch.Tensor) -> list[tuple[nn.Module, torch.Tensor]]:
        """``(head, logits)`` of the decode head and every auxiliary head, logits upsampled (``align_corners=True``)
        to the image size, padding removed: the released ``SegFormer.forward`` for each head."""
        inputs = self.prepare(images)
        height, width = int(images.shape[-2]), int(images.shape[-1])
        feats = self.model.extract_feat(inputs)
        heads: list[nn.Module] = [self.model.decode_head]
        aux = getattr(self.model, "auxiliary_head", None)
        if aux is not None:
            heads += list(aux) if isinstance(aux, nn.ModuleList) else [aux]
        out = []
        for head in heads:
            logits = upsample(head(feats), inputs.shape[-2:])
            out.append((head, logits[..., :height, :width]))
        return out

    def full_resolution_loss(self, images: torch.Tensor, masks: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Each head's loss modules on its logits upsampled (``align_corners=True``) to each mask's own size.

        ``masks`` is a ``(B, H', W')`` tensor or, for masks of different sizes, a list of ``(H'_i, W'_i)`` tensors
        (the loss is then the pixel-weighted mean over the images, as one batch of equal sizes would give).
        """
        total: torch.Tensor | None = None
        for head, logits in self.head_logits(images):
            if isinstance(masks, torch.Tensor):
                term = _head_loss(head, upsample(logits, masks.shape[-2:]), masks.long())
            else:
                pixels = sum(int(m.numel()) for m in masks)
                parts = [
                    _head_loss(head, upsample(logits[i : i + 1], m.shape[-2:]), m.long()[None]) * (m.numel() / pixels)
                    for i, m in enumerate(masks)
                ]
                term = torch.stack(parts).sum()
            total = term if total is None else total + term
        assert total is not None
        return total

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, C, H, W)`` at the image size (the segmentor's ``predict``, honouring its test_cfg)."""
        inputs, samples = self.data_samples(images)
        results = self.model.predict(inputs, samples)
        return torch.stack([r.seg_logits.data for r in results])


def _head_loss(head: nn.Module, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Sum of ``head``'s loss modules (``loss_decode``: one module or a list) as mmseg's ``loss_by_feat`` calls them."""
    modules = head.loss_decode if isinstance(head.loss_decode, nn.ModuleList) else [head.loss_decode]
    terms = [m(logits, masks, weight=None, ignore_index=head.ignore_index) for m in modules]
    return torch.stack([t.sum() if t.dim() else t for t in terms]).sum()


class MMSegTask(OpenMMLabTask):
    """Semantic segmentation with any MMSegmentation model.

    Options (keyword arguments, also from a run's YAML), besides those of
    :class:`~tdfusion_openmmlab.task.OpenMMLabTask` (``config``, ``cfg_options``, ``input_kind``, ``size_divisor``,
    ``unfreeze``):
        loss_resolution: ``"full"`` (default; masks at their native resolution, logits upsampled with
            ``align_corners=True``, as the released code) or ``"task"`` (masks resized to the task input size, the
            segmentor's own loss).

    Default config: SegFormer mit-b0 (``"segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512"``).
    """

    name = "mmseg"
    input_kind = "rgb"
    target_kind = "mask"
    #: the released code's segmentation task input (MSRS, 240x320)
    default_input_size = (240, 320)
    ignore_index: ClassVar[int] = 255
    package: ClassVar[str] = "mmseg"
    network_class = SegmentorNetwork
    model_kind: ClassVar[str] = "segmentation model"

    def __init__(self, num_classes: int | None = None, loss_resolution: str = "full", **options: Any) -> None:
        if loss_resolution not in LOSS_RESOLUTIONS:
            raise ValueError(f"loss_resolution must be one of {LOSS_RESOLUTIONS}, not {loss_resolution!r}")
        super().__init__(num_classes=num_classes, loss_resolution=loss_resolution, **options)
        self.loss_resolution = loss_resolution

    def default_config(self) -> Any:
        return DEFAULT_CONFIG

    def model_num_classes(self, model: nn.Module) -> int:
        return int(model.decode_head.num_classes)  # type: ignore[union-attr]

    # ------------------------------------------------------------------ targets
    def resize_targets(self, target: Any, size: tuple[int, int], new_size: tuple[int, int]) -> Any:
        """``"full"``: the mask as loaded (its native resolution); ``"task"``: resized (nearest) to ``new_size``."""
        if self.loss_resolution == "full":
            return target
        return super().resize_targets(target, size, new_size)

    def collate_targets(self, targets: list[Any]) -> Any:
        """Masks stacked ``(B, H, W)``, or a list when their native sizes differ (``"full"``)."""
        if len({tuple(t.shape) for t in targets}) > 1:
            return list(targets)
        return torch.stack(targets)

    # ------------------------------------------------------------------ loss and evaluation
    def compute_loss(self, network: nn.Module, images: torch.Tensor, targets: Any) -> torch.Tensor:
        if isinstance(targets, (list, tuple)):
            masks: Any = [torch.as_tensor(t, device=images.device) for t in targets]
        else:
            masks = torch.as_tensor(targets, device=images.device)
        if self.loss_resolution == "full":
            return network.full_resolution_loss(images, masks)  # type: ignore[operator]
        if isinstance(masks, list):
            masks = torch.stack(masks)
        return network.loss(images, masks)  # type: ignore[operator]

    @torch.no_grad()
    def evaluate(self, network: nn.Module, batches: Iterable[tuple[torch.Tensor, Any]]) -> dict[str, float]:
        """mIoU, mAcc, aAcc and per-class ``IoU.<c>`` / ``Acc.<c>`` over all batches (255 ignored), at the masks'
        resolution."""
        num_classes = self.num_classes or self.model_num_classes(network.model)  # type: ignore[arg-type]
        cm = ConfusionMatrix(int(num_classes), self.ignore_index)
        for images, targets in batches:  # eval mode: the Task base class wraps evaluate
            logits = network(images)
            masks = targets if isinstance(targets, (list, tuple)) else list(torch.as_tensor(targets))
            for i, mask in enumerate(masks):
                mask = torch.as_tensor(mask, device=logits.device)
                cm.update(upsample(logits[i : i + 1], mask.shape[-2:]).argmax(1), mask[None])
        return cm.compute()


def _variant(variant: str) -> str:
    key = str(variant).lower().removeprefix("mit-").removeprefix("mit_").removeprefix("segformer-")
    if key not in SEGFORMER_CONFIGS:
        raise ValueError(f"unknown SegFormer variant {variant!r}; choose one of {', '.join(SEGFORMER_CONFIGS)}")
    return key


class SegFormerTask(MMSegTask):
    """SegFormer (MixVisionTransformer + SegFormer head) from the configs shipped with mmsegmentation.

    ``variant``: ``"b0"`` (default, the released TDFusion code's task network) to ``"b5"``. As released, it takes
    the fused luminance (``in_channels=1`` patch embedding, no mean / std) and is trained with the full-resolution
    cross-entropy; ``input_kind="rgb"`` and ``loss_resolution="task"`` are options. Other options as
    :class:`MMSegTask` (``config`` overrides the variant's config entirely).
    """

    name = "segformer"
    input_kind = "luminance"

    def __init__(self, num_classes: int | None = None, variant: str = "b0", **options: Any) -> None:
        self.variant = _variant(variant)
        super().__init__(num_classes=num_classes, variant=self.variant, **options)

    def default_config(self) -> Any:
        return SEGFORMER_CONFIGS[self.variant]


def segformer_config(variant: str = "b0") -> str:
    """Name of the shipped config of a SegFormer variant (``"b0"`` … ``"b5"``)."""
    return SEGFORMER_CONFIGS[_variant(variant)]


def available_configs() -> Mapping[str, str]:
    """The SegFormer variants and their config names."""
    return dict(SEGFORMER_CONFIGS)
