"""Tasks ``mmseg`` (any MMSegmentation model) and ``segformer`` (SegFormer mit-b0 … b5).

The network is the MMSegmentation segmentor wrapped in :class:`SegmentorNetwork`, which normalises the RGB input in
the graph (the segmentor's data preprocessor is not used), so ``compute_loss`` is differentiable with respect to
the fused image. The loss is the segmentor's own ``loss()`` dict (decode head, auxiliary heads) summed over the
entries whose key contains ``"loss"``. Evaluation: mIoU / mAcc / aAcc and per-class IoU / Acc.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as nnf
from tdfusion_mmcv_compat.openmmlab import (
    NormalizedModel,
    build_model,
    import_openmmlab,
    load_weights,
    preprocessor_settings,
    resolve_config,
    sanitize_model_config,
    set_num_classes,
    sum_losses,
)

from tdfusion_core.metrics.segmentation import ConfusionMatrix
from tdfusion_core.task import Task

#: SegFormer variants -> config shipped in the mmsegmentation wheel (ADE20K 512x512 schedule; only the model is used)
SEGFORMER_CONFIGS: dict[str, str] = {
    f"b{i}": f"segformer/segformer_mit-b{i}_8xb2-160k_ade20k-512x512" for i in range(6)
}
DEFAULT_CONFIG = SEGFORMER_CONFIGS["b0"]


class SegmentorNetwork(NormalizedModel):
    """An MMSegmentation segmentor with in-graph normalisation; ``forward(images)`` gives logits ``(B, C, H, W)``."""

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
        """Sum of the segmentor's loss terms on RGB ``images`` in [0, 1] against masks ``(B, H, W)``."""
        if tuple(masks.shape[-2:]) != tuple(images.shape[-2:]):
            raise ValueError(f"mask size {tuple(masks.shape[-2:])} != image size {tuple(images.shape[-2:])}")
        inputs, samples = self.data_samples(images, masks)
        return sum_losses(self.model.loss(inputs, samples))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, C, H, W)`` at the image size (the segmentor's ``predict``, honouring its test_cfg)."""
        inputs, samples = self.data_samples(images)
        results = self.model.predict(inputs, samples)
        return torch.stack([r.seg_logits.data for r in results])


class MMSegTask(Task):
    """Semantic segmentation with any MMSegmentation model.

    Options (keyword arguments, also from a run's YAML):
        config: a config file path, the name of a config shipped with mmsegmentation (e.g.
            ``"segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512"``), or a dict (a full config with ``model`` or a
            model dict). Default: SegFormer mit-b0.
        cfg_options: mmengine-style dotted overrides, e.g. ``{"model.decode_head.channels": 128}``.
        size_divisor: pad the input to a multiple of this (default: the config's ``size_divisor``, else 1).
        unfreeze: release ``frozen_stages`` / ``norm_eval`` when no pretrained weights are loaded (default True).

    ``num_classes`` (from the dataset) sets every head's class count; ``None`` keeps the config's.
    ``checkpoint`` loads local weights (mmseg checkpoints or state dicts; heads of another class count skipped).
    Weights a config would download (``pretrained`` / ``init_cfg``) are dropped unless they are local files.
    """

    name = "mmseg"
    input_kind = "rgb"
    target_kind = "mask"
    #: the released code's segmentation task input (MSRS, 240x320)
    default_input_size = (240, 320)
    ignore_index: ClassVar[int] = 255
    package: ClassVar[str] = "mmseg"

    def __init__(
        self,
        num_classes: int | None = None,
        checkpoint: str | Path | None = None,
        lr: float = 1e-4,
        config: Any = None,
        **options: Any,
    ) -> None:
        super().__init__(num_classes=num_classes, checkpoint=checkpoint, lr=lr, **options)
        self.config["config"] = config if config is not None else self.default_config()

    def default_config(self) -> Any:
        """The config used when none is given."""
        return DEFAULT_CONFIG

    def model_config(self) -> dict[str, Any]:
        """The sanitised model config that :meth:`build_network` builds (offline, one process, class count set)."""
        import_openmmlab(self.package)
        full = resolve_config(self.package, self.config["config"], self.config.get("cfg_options"))
        model = full["model"]
        sanitize_model_config(model, unfreeze=bool(self.config.get("unfreeze", True)))
        if self.num_classes is not None and set_num_classes(model, int(self.num_classes)) == 0:
            raise ValueError("the model config has no 'num_classes' to set (is it a segmentation model?)")
        return model

    def build_network(self) -> nn.Module:
        model_cfg = self.model_config()
        settings = preprocessor_settings(model_cfg)
        if self.config.get("size_divisor") is not None:
            settings["size_divisor"] = int(self.config["size_divisor"])
        model = build_model(self.package, model_cfg)
        if self.num_classes is None:
            self.num_classes = int(model.decode_head.num_classes)
        return SegmentorNetwork(model, **settings)

    def load_checkpoint(self, network: nn.Module, path: Path) -> None:
        """Load mmseg checkpoints or state dicts (keys with or without the ``model.`` prefix)."""
        load_weights(network, path)  # type: ignore[arg-type]

    def compute_loss(self, network: nn.Module, images: torch.Tensor, targets: Any) -> torch.Tensor:
        return network.loss(images, torch.as_tensor(targets, device=images.device))  # type: ignore[operator]

    @torch.no_grad()
    def evaluate(self, network: nn.Module, batches: Iterable[tuple[torch.Tensor, Any]]) -> dict[str, float]:
        """mIoU, mAcc, aAcc and per-class ``IoU.<c>`` / ``Acc.<c>`` over all batches (255 ignored)."""
        was_training = network.training
        network.eval()
        num_classes = self.num_classes or int(network.model.decode_head.num_classes)  # type: ignore[union-attr]
        cm = ConfusionMatrix(int(num_classes), self.ignore_index)
        try:
            for images, targets in batches:
                logits = network(images)
                cm.update(logits.argmax(1), torch.as_tensor(targets, device=logits.device))
        finally:
            network.train(was_training)
        return cm.compute()


def _variant(variant: str) -> str:
    key = str(variant).lower().removeprefix("mit-").removeprefix("mit_").removeprefix("segformer-")
    if key not in SEGFORMER_CONFIGS:
        raise ValueError(f"unknown SegFormer variant {variant!r}; choose one of {', '.join(SEGFORMER_CONFIGS)}")
    return key


class SegFormerTask(MMSegTask):
    """SegFormer (MixVisionTransformer + SegFormer head) from the configs shipped with mmsegmentation.

    ``variant``: ``"b0"`` (default, the released TDFusion code's task network) to ``"b5"``. Other options as
    :class:`MMSegTask` (``config`` overrides the variant's config entirely).
    """

    name = "segformer"

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
