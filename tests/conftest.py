"""Shared fixtures: the ``../shared`` folder of real data, weights and golden files, and a clean plugin manager."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

REPO = Path(__file__).resolve().parents[1]

# The test plugin distribution also installs a plugin that is broken on purpose. Tests that want it set the
# allow-list themselves (fixture ``fresh_plugins``); every other test runs with all installed plugins but that one.
if "TDFUSION_LOAD_PLUGINS" not in os.environ:
    import importlib.metadata

    os.environ["TDFUSION_LOAD_PLUGINS"] = ",".join(
        ep.name for ep in importlib.metadata.entry_points(group="tdfusion") if ep.name != "brokenplugin"
    )
_P = TypeVar("_P")
SHARED = Path(os.environ.get("TDFUSION_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """Path inside the shared folder; fails the test (never skips) with what is missing and how to provide it."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(
            f"required shared file {path} is missing. These tests read the project's shared data, weights and "
            f"golden files from {SHARED} (set TDFUSION_SHARED to point elsewhere).",
            pytrace=False,
        )
    return path


@pytest.fixture
def shared() -> Path:
    """The shared folder (``../shared`` beside the repository, or ``$TDFUSION_SHARED``)."""
    return shared_path()


@pytest.fixture
def fresh_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Rebuild the plugin manager before and after the test so env changes take effect and do not leak."""
    from tdfusion_core.plugin.manager import reset_plugin_manager

    reset_plugin_manager()
    yield monkeypatch
    monkeypatch.undo()
    reset_plugin_manager()


def write_small_checkpoint(path: Path) -> Path:
    """Save a tdfusion checkpoint at ``path`` with a small random ReFusion and LPN (``dim=8``, one block, two
    heads; fast on the CPU), drawn after ``torch.manual_seed(0)``; returns ``path``."""
    import torch

    from tdfusion_core.nets.lpn import LossGenerator
    from tdfusion_core.nets.refusion import FusionNet
    from tdfusion_core.training.checkpoints import save_model_checkpoint

    small = {"dim": 8, "num_blocks": 1, "heads": 2}
    torch.manual_seed(0)
    save_model_checkpoint(
        path,
        fusion_net=FusionNet(**small),
        fusion_arch="refusion",
        fusion_config=small,
        loss_generator=LossGenerator(**small),
        lossgen_arch="lpn",
        lossgen_config=small,
    )
    return path


@contextlib.contextmanager
def plugin_registered(plugin: _P, name: str) -> Iterator[_P]:
    """``plugin`` registered under ``name`` within the block, and unregistered after it however the block ends."""
    from tdfusion_core.plugin.manager import register_plugin, unregister_plugin

    register_plugin(plugin, name=name)
    try:
        yield plugin
    finally:
        unregister_plugin(name)
