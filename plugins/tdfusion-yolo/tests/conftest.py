"""Fixtures of the tdfusion-yolo tests: one yolov8n task per module (building it takes seconds on a busy CPU)."""

from __future__ import annotations

import copy

import pytest
import torch
from tdfusion_yolo.task import YoloTask


@pytest.fixture(scope="session")
def base_task() -> YoloTask:
    """A 1-class RGB yolov8n task, randomly initialised with a fixed seed (do not mutate its network)."""
    torch.manual_seed(0)
    task = YoloTask(num_classes=1)
    _ = task.network
    return task


@pytest.fixture
def yolo_task(base_task: YoloTask) -> YoloTask:
    """A private copy of :func:`base_task` (same weights), free to modify."""
    task = YoloTask(num_classes=1)
    task.network = copy.deepcopy(base_task.network)
    return task


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch):
    """Rebuild the plugin manager so the installed entry points are read again (no allow-list)."""
    from tdfusion_core.plugins import reset_plugin_manager

    monkeypatch.delenv("TDFUSION_LOAD_PLUGINS", raising=False)
    reset_plugin_manager()
    yield
    monkeypatch.undo()
    reset_plugin_manager()
