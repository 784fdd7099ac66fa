"""``tiny-seg``: a small built-in semantic-segmentation task that needs nothing but torch.

Used by the demo and the tests, and a compact reference for writing a task plugin. The network is a 3-level
conv encoder-decoder with BatchNorm (so the meta step's BatchNorm save/restore is exercised); the loss is
cross-entropy with ignore index 255, by default as the released ``CE_Loss``: at the mask's full resolution with
the logits upsampled bilinearly (``align_corners=True``); evaluation gives mIoU, mAcc and per-class IoU/Acc.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as nnf

from tdfusion_core.kernel.task import Task
from tdfusion_core.metrics.segmentation import ConfusionMatrix


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=False)
    )


class TinySegNet(nn.Module):
    """Encoder-decoder segmenter: ``(B, C, H, W)`` -> logits ``(B, num_classes, H, W)``."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4, width: int = 16) -> None:
        super().__init__()
        w = width
        self.enc1 = _block(in_channels, w)
        self.enc2 = _block(w, 2 * w, stride=2)
        self.enc3 = _block(2 * w, 4 * w, stride=2)
        self.dec2 = _block(4 * w + 2 * w, 2 * w)
        self.dec1 = _block(2 * w + w, w)
        self.head = nn.Conv2d(w, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([nnf.interpolate(e3, size=e2.shape[-2:], mode="bilinear"), e2], 1))
        d1 = self.dec1(torch.cat([nnf.interpolate(d2, size=e1.shape[-2:], mode="bilinear"), e1], 1))
        return self.head(d1)


class TinySegTask(Task):
    """Semantic segmentation with :class:`TinySegNet`.

    Config: ``width`` (channels of the first level, default 16), ``in_channels`` follows :attr:`input_kind`:
    ``"luminance"`` (default, what the released code feeds its task networks: the one-channel fused Y) or ``"rgb"``
    (an extension: RGB rebuilt from the fused Y and the sources' chroma). ``loss_resolution``: ``"full"`` (default,
    released: masks at the image's resolution, logits upsampled to them) or ``"task"`` (masks resized, nearest, to
    the task size).
    """

    name = "tiny-seg"
    input_kind = "luminance"
    target_kind = "mask"
    ignore_index = 255
    primary_metric = "mIoU"
    config_keys = ("width",)

    def __init__(
        self, num_classes: int | None = 4, input_kind: str | None = None, loss_resolution: str = "full", **config: Any
    ) -> None:
        super().__init__(num_classes=num_classes, **config)
        if loss_resolution not in ("full", "task"):
            raise ValueError(f"loss_resolution must be 'full' or 'task', not {loss_resolution!r}")
        self.full_resolution_targets = loss_resolution == "full"
        if input_kind is not None:
            if input_kind not in ("luminance", "rgb"):
                raise ValueError(f"input_kind must be 'luminance' or 'rgb', not {input_kind!r}")
            self.input_kind = input_kind  # type: ignore[misc,assignment]

    def build_network(self) -> nn.Module:
        channels = 1 if self.input_kind == "luminance" else 3
        return TinySegNet(channels, int(self.num_classes or 4), int(self.config.get("width", 16)))

    def compute_loss(self, network: nn.Module, images: torch.Tensor, targets: Any) -> torch.Tensor:
        logits = network(images)
        if logits.shape[-2:] != targets.shape[-2:]:
            logits = nnf.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=True)
        return nnf.cross_entropy(logits, targets.long(), ignore_index=self.ignore_index)

    @torch.no_grad()
    def evaluate(self, network: nn.Module, batches: Iterable[tuple[torch.Tensor, Any]]) -> dict[str, float]:
        cm = ConfusionMatrix(int(self.num_classes or 4), self.ignore_index)
        for images, targets in batches:  # in eval mode: the Task base class sees to it
            logits = network(images)
            if logits.shape[-2:] != targets.shape[-2:]:
                logits = nnf.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=True)
            cm.update(logits.argmax(1), targets)
        return cm.compute()
