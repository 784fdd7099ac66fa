"""Helpers of the tdfusion-mmseg tests (a uniquely named module: several plugin test folders run together)."""

from __future__ import annotations

from pathlib import Path

from tdfusion_openmmlab.testing import TinyFusion, TinyGenerator, shared_root
from tdfusion_openmmlab.testing import shared_path as _shared_path

REPO = Path(__file__).resolve().parents[3]
SHARED = shared_root(REPO)
NUM_CLASSES = 5  # the synthetic scenes' mask classes

__all__ = ["NUM_CLASSES", "REPO", "SHARED", "TinyFusion", "TinyGenerator", "shared_path"]


def shared_path(*parts: str) -> Path:
    """Path inside the shared folder; fails the test (never skips) naming what is missing."""
    return _shared_path(SHARED, *parts)
