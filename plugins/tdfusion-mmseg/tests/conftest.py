"""Fixtures of the tdfusion-mmseg tests: shared data, a network-free guard, one SegFormer-b0 task per session."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from mmseg_testutils import NUM_CLASSES
from tdfusion_openmmlab.testing import offline


@pytest.fixture(scope="session")
def offline_guard() -> Iterator[None]:
    """Make every socket connection raise for the whole session (nothing may download)."""
    with offline():
        yield


@pytest.fixture(scope="session")
def base_task(offline_guard: None) -> Any:
    """The default ``segformer`` task (mit-b0, 5 classes, luminance input, full-resolution loss), built offline with
    a fixed seed. Do not mutate it."""
    from tdfusion_core.plugin.registry import get_task

    torch.manual_seed(0)
    task = get_task("segformer", num_classes=NUM_CLASSES)
    _ = task.network
    return task


@pytest.fixture
def seg_task(base_task: Any) -> Any:
    """A private copy of :func:`base_task` (same weights), free to modify."""
    from tdfusion_mmseg.task import SegFormerTask

    task = SegFormerTask(num_classes=NUM_CLASSES)
    task.network = copy.deepcopy(base_task.network)
    return task


@pytest.fixture(scope="session")
def rgb_base_task(offline_guard: None) -> Any:
    """The ``mmseg`` task with its defaults (SegFormer mit-b0 config, RGB input) and the ``"task"`` loss resolution."""
    from tdfusion_core.plugin.registry import get_task

    torch.manual_seed(0)
    task = get_task("mmseg", num_classes=NUM_CLASSES, loss_resolution="task")
    _ = task.network
    return task


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 64x80 luminance images in [0, 1] and masks of the same size with all classes and some ignored pixels."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 1, 64, 80, generator=g)
    masks = torch.randint(0, NUM_CLASSES, (2, 64, 80), generator=g)
    masks[:, :4] = 255
    return images, masks


@pytest.fixture
def rgb_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`batch` with three colour channels."""
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 64, 80, generator=g), batch[1]
