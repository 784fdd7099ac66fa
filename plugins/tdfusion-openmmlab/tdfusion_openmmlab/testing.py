"""Helpers shared by the tests of tdfusion-mmseg, tdfusion-mmdet and tdfusion-openmmlab (pytest only needed here).

* :func:`offline` makes every socket connection raise (nothing may download);
* :func:`shared_path` finds the project's shared data and fails (never skips) naming what is missing;
* :class:`TinyFusion` and :class:`TinyGenerator` are small F and G for fast meta-training tests.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn


class NetworkAccessError(RuntimeError):
    """Raised by :func:`offline` when code tries to open a network connection."""


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise NetworkAccessError(f"network access attempted during an offline test: {args[1:] or kwargs}")


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Within the block, every socket connection raises :class:`NetworkAccessError`."""
    import pytest

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _refuse)
        mp.setattr(socket.socket, "connect_ex", _refuse)
        mp.setattr(socket, "create_connection", _refuse)
        yield


def shared_root(repo: Path) -> Path:
    """The shared data folder: ``$TDFUSION_SHARED``, else ``shared`` beside the repository ``repo``."""
    return Path(os.environ.get("TDFUSION_SHARED", repo.parent / "shared"))


def shared_path(root: Path, *parts: str) -> Path:
    """``root/parts``; fails the test (never skips) naming what is missing and how to provide it."""
    import pytest

    path = root.joinpath(*parts)
    if not path.exists():
        pytest.fail(
            f"required shared file {path} is missing. These tests read the project's shared data from {root} "
            "(the `shared` folder beside the repository; set TDFUSION_SHARED to point elsewhere).",
            pytrace=False,
        )
    return path


class TinyFusion(nn.Module):
    """A two-layer fusion net: (B, K, H, W) sources -> (B, 1, H, W) fused luminance in [0, 1]."""

    def __init__(self, k: int = 2) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(k, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(x))


class TinyGenerator(nn.Module):
    """A loss generator: per-pixel softmax weights over the K sources."""

    def __init__(self, k: int = 2) -> None:
        super().__init__()
        self.body = nn.Conv2d(k, k, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.body(x), dim=1)
