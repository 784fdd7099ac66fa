"""Helpers of the data tests: copies of real shared pairs, tiny image folders, painted boxes."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tdfusion_core.data.sample import Sample
from tests.conftest import shared_path


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """Small tensor ops are far faster on one thread when the 2 cores are shared (no oversubscription)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def copy_real(dataset: str, names: Sequence[str], dest: Path, split: str = "train", labels: bool = True) -> Path:
    """Copy pairs ``names`` (and their YOLO labels) of a shared dataset into ``dest/<split>``; returns ``dest``."""
    src = shared_path("data", dataset, split)
    for folder in ("ir", "vi", "labels") if labels else ("ir", "vi"):
        if not (src / folder).is_dir():
            continue
        (dest / split / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            suffix = ".txt" if folder == "labels" else ".png"
            shutil.copy(src / folder / f"{name}{suffix}", dest / split / folder / f"{name}{suffix}")
    return dest


def write_gray(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


def make_folder(
    root: Path,
    names: Sequence[str] = ("a", "b", "c"),
    size: tuple[int, int] = (24, 32),
    sources: Sequence[str] = ("ir", "vi"),
    split: str = "train",
    mask_classes: int | None = None,
    seed: int = 0,
) -> Path:
    """A tiny dataset: random gray sources (the second one RGB), optional masks with values < mask_classes."""
    rng = np.random.default_rng(seed)
    h, w = size
    for name in names:
        for k, s in enumerate(sources):
            path = root / split / s / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            if k == 1:
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
            else:
                write_gray(path, rng.integers(0, 256, (h, w)))
        if mask_classes is not None:
            write_gray(root / split / "label" / f"{name}.png", rng.integers(0, mask_classes, (h, w)))
    return root


def painted_sample(boxes: torch.Tensor, size: tuple[int, int], k: int = 2) -> Sample:
    """A sample whose source 0 is 1 exactly inside each integer box (and 0 elsewhere); source 1 is noise."""
    h, w = size
    img = torch.zeros(h, w)
    for _, x0, y0, x1, y1 in boxes.long().tolist():
        img[y0:y1, x0:x1] = 1.0
    sources = torch.stack([img, *[torch.rand(h, w) for _ in range(k - 1)]])
    return Sample(sources=sources, chroma=torch.full((k, 2, h, w), 0.5), target=boxes.float(), name="painted")


def box_of(region: torch.Tensor) -> tuple[int, int, int, int] | None:
    """Pixel-edge bounding box ``(x0, y0, x1, y1)`` of the True pixels of ``region``, or None."""
    ys, xs = torch.nonzero(region, as_tuple=True)
    if ys.numel() == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
