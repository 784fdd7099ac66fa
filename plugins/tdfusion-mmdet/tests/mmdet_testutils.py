"""Helpers of the tdfusion-mmdet tests (a uniquely named module: several plugin test folders run together)."""

from __future__ import annotations

from pathlib import Path

from tdfusion_openmmlab.testing import TinyFusion, TinyGenerator, shared_root
from tdfusion_openmmlab.testing import shared_path as _shared_path

REPO = Path(__file__).resolve().parents[3]
SHARED = shared_root(REPO)

__all__ = ["DETECTORS", "REPO", "SHARED", "TinyFusion", "TinyGenerator", "shared_path"]

#: detector short name -> mmdet class name; every one is built and trained in the tests
DETECTORS = {
    "rtmdet-tiny": "RTMDet",
    "yolox-tiny": "YOLOX",
    "retinanet-r50": "RetinaNet",
    "faster-rcnn-r50": "FasterRCNN",
}


def shared_path(*parts: str) -> Path:
    """Path inside the shared folder; fails the test (never skips) naming what is missing."""
    return _shared_path(SHARED, *parts)
