"""Helpers of the tdfusion-yolo tests: the shared data folder and a small independent reader of its YOLO labels."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as nnf

from tdfusion_core.common.colour import ycbcr_to_rgb
from tdfusion_core.common.io import read_image

#: the repository root (tests -> tdfusion-yolo -> plugins -> repo)
REPO = Path(__file__).resolve().parents[3]
SHARED = Path(os.environ.get("TDFUSION_SHARED", REPO.parent / "shared"))
#: small task size used by the tests (multiples of 32, LLVIP's 5:4 and MSRS's 4:3 are both close to it)
SIZE = (128, 160)


# The plugin's tests run from its installed wheel, without core's tests/conftest.py (same helper) or
# tdfusion-openmmlab's testing module, so this copy stays.
def shared_path(*parts: str) -> Path:
    """Path inside the shared folder; FAILS the test (never skips) naming what is missing and how to provide it."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(
            f"required shared file {path} is missing. The tdfusion-yolo tests read the project's real IR/visible "
            f"data from {SHARED} (the 'shared' folder beside the repository; set TDFUSION_SHARED to point elsewhere).",
            pytrace=False,
        )
    return path


def read_yolo_boxes(path: Path, height: int, width: int) -> torch.Tensor:
    """``class cx cy w h`` (normalised) lines -> ``(N, 5)`` rows ``class, x0, y0, x1, y1`` in pixels of H x W."""
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            c, cx, cy, w, h = (float(v) for v in line.split())
            rows.append([c, (cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height])
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)


def load_pairs(
    dataset: str, split: str = "train", count: int = 2, size: tuple[int, int] = SIZE, kind: str = "rgb"
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The first ``count`` scenes of a shared dataset resized to ``size``: task images and pixel boxes.

    ``kind="rgb"`` gives the visible image in RGB ``(B, 3, H, W)``; ``"luminance"`` the infrared ``(B, 1, H, W)``.
    """
    root = shared_path("data", dataset, split)
    names = sorted(p.stem for p in (root / "labels").glob("*.txt"))[:count]
    images, boxes = [], []
    for name in names:
        if kind == "rgb":
            y, chroma = read_image(root / "vi" / f"{name}.png")
            image = ycbcr_to_rgb(y, chroma)
        else:
            image, _ = read_image(root / "ir" / f"{name}.png")
        images.append(nnf.interpolate(image[None], size=size, mode="bilinear", antialias=True)[0].clamp(0, 1))
        boxes.append(read_yolo_boxes(root / "labels" / f"{name}.txt", *size))
    return torch.stack(images), boxes
