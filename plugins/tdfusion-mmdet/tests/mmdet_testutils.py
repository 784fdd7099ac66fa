"""Helpers of the tdfusion-mmdet tests (a uniquely named module: several plugin test folders run together)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn

REPO = Path(__file__).resolve().parents[3]
SHARED = Path(os.environ.get("TDFUSION_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """Path inside the shared folder; fails the test (never skips) naming what is missing and how to provide it."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(
            f"required shared file {path} is missing. These tests read the project's shared data from {SHARED} "
            "(the `shared` folder beside the repository; set TDFUSION_SHARED to point elsewhere).",
            pytrace=False,
        )
    return path


#: detector short name -> mmdet class name; every one is built and trained in the tests
DETECTORS = {
    "rtmdet-tiny": "RTMDet",
    "yolox-tiny": "YOLOX",
    "retinanet-r50": "RetinaNet",
    "faster-rcnn-r50": "FasterRCNN",
}


class TinyFusion(nn.Module):
    """A two-layer fusion net: (B, K, H, W) sources -> (B, 1, H, W) fused luminance in [0, 1]."""

    def __init__(self, k: int = 2) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(k, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(x))


class TinyGenerator(nn.Module):
    """A loss generator: per-pixel softmax weights over the K sources."""

    def __init__(self, k: int = 2) -> None:
        super().__init__()
        self.body = nn.Conv2d(k, k, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.body(x), dim=1)
