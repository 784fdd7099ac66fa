"""Fixtures of the tdfusion-mmdet tests: shared data (LLVIP), a network-free guard, one task per detector."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from tdfusion_openmmlab.testing import offline


@pytest.fixture(scope="session")
def offline_guard() -> Iterator[None]:
    """Make every socket connection raise for the whole session (nothing may download)."""
    with offline():
        yield


_built: dict[str, Any] = {}


@pytest.fixture(scope="session")
def build_detector(offline_guard: None) -> Any:
    """``build_detector(name)``: the 1-class ``mmdet`` task of a :data:`DETECTORS` entry, built once, offline."""
    from tdfusion_core.plugin.registry import get_task

    def build(name: str) -> Any:
        if name not in _built:
            torch.manual_seed(0)
            task = get_task("mmdet", num_classes=1, config=name)
            _ = task.network
            _built[name] = task
        return _built[name]

    return build


@pytest.fixture
def det_batch() -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Two 64x80 RGB images in [0, 1] with 2 and 1 person boxes (class, x0, y0, x1, y1 in pixels)."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 64, 80, generator=g)
    boxes = [
        torch.tensor([[0, 5.0, 6.0, 30.0, 40.0], [0, 40.0, 10.0, 70.0, 60.0]]),
        torch.tensor([[0, 10.0, 12.0, 50.0, 50.0]]),
    ]
    return images, boxes
