"""Fixtures of the tdfusion-yolo tests: torch on one thread, a shared yolov8n task, a fresh plugin registry.

One thread: on the shared 2-core machines several test runs compete for the cores and torch's intra-op pool then
spends its time at barriers (a yolov8n forward at 64x96 measured 0.8-2 s on 2 threads, 0.06 s on one).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from tdfusion_yolo.task import YoloTask


# Core's tests/torch_threads.py holds the same fixture; the plugin's tests run without core's tests/ (from the
# plugin's wheel), so this copy stays.
@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def base_task() -> YoloTask:
    """A 1-class RGB yolov8n task, randomly initialised with a fixed seed (do not mutate its network)."""
    torch.manual_seed(0)
    task = YoloTask(input_kind="rgb", num_classes=1)
    _ = task.network
    return task


@pytest.fixture
def yolo_task(base_task: YoloTask) -> YoloTask:
    """A private copy of :func:`base_task` (same weights), free to modify."""
    task = YoloTask(input_kind="rgb", num_classes=1)
    task.network = copy.deepcopy(base_task.network)
    return task


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch):
    """Rebuild the plugin manager so the installed entry points are read again (no allow-list)."""
    from tdfusion_core.plugin.manager import reset_plugin_manager

    monkeypatch.delenv("TDFUSION_LOAD_PLUGINS", raising=False)
    reset_plugin_manager()
    yield
    monkeypatch.undo()
    reset_plugin_manager()
