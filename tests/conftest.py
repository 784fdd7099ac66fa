"""Shared fixtures: the ``../shared`` folder of real data, weights and golden files, and a clean plugin manager."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The test plugin distribution also installs a plugin that is broken on purpose. Tests that want it set the
# allow-list themselves (fixture ``fresh_plugins``); every other test runs with all installed plugins but that one.
if "TDFUSION_LOAD_PLUGINS" not in os.environ:
    import importlib.metadata

    os.environ["TDFUSION_LOAD_PLUGINS"] = ",".join(
        ep.name for ep in importlib.metadata.entry_points(group="tdfusion") if ep.name != "brokenplugin"
    )
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
    from tdfusion_core.plugins import reset_plugin_manager

    reset_plugin_manager()
    yield monkeypatch
    monkeypatch.undo()
    reset_plugin_manager()
