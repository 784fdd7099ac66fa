"""Helpers shared by the tests of tdfusion-mmseg, tdfusion-mmdet and tdfusion-openmmlab (pytest only needed here).

* :func:`offline` makes every socket connection raise (nothing may download);
* :func:`shared_path` finds the project's shared data and fails (never skips) naming what is missing;
* :class:`TinyFusion` and :class:`TinyGenerator` are small F and G for fast meta-training tests;
* :class:`PhaseChecks` runs both phases of Algorithm 1 and checks what each must do to G and T.
"""

from __future__ import annotations

import contextlib
import math
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


# The plugins' tests run from installed wheels without the core repository's tests/ (whose trainer_utils has
# similar small nets), so TinyFusion and this class stay here.
class TinyGenerator(nn.Module):
    """A loss generator: per-pixel softmax weights over the K sources."""

    def __init__(self, k: int = 2) -> None:
        super().__init__()
        self.body = nn.Conv2d(k, k, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.body(x), dim=1)


class PhaseChecks:
    """Both phases of Algorithm 1 on ``trainer``, each checked against the state of G and T at construction.

    :meth:`meta`: finite losses, G moved, and T's state dict unchanged (T' is functional; BatchNorm statistics
    restored). :meth:`fusion`: a finite task loss, T moved, and T still holds the same parameter tensors (its
    optimizer steps them). Each returns the phase's metrics for the caller's own checks.
    """

    def __init__(self, trainer: Any, task_network: nn.Module) -> None:
        self.trainer, self.network = trainer, task_network
        self.t_state = {k: v.clone() for k, v in task_network.state_dict().items()}
        self.t_params = list(task_network.parameters())
        self.g_before = [p.detach().clone() for p in trainer.loss_generator.parameters()]

    def meta(self) -> dict[str, float]:
        meta: dict[str, float] = self.trainer.meta_phase(0)
        assert math.isfinite(meta["meta/task_loss"]) and math.isfinite(meta["meta/fusion_loss"])
        g_after = self.trainer.loss_generator.parameters()
        assert any(not torch.equal(a, b) for a, b in zip(self.g_before, g_after)), "G must learn"
        for key, value in self.network.state_dict().items():
            assert torch.equal(value, self.t_state[key]), f"the meta step changed T's {key}"
        return meta

    def fusion(self) -> dict[str, float]:
        fusion: dict[str, float] = self.trainer.fusion_phase(0)
        assert math.isfinite(fusion["fusion/task_loss"])
        state = self.network.state_dict()
        assert any(not torch.equal(v, self.t_state[k]) for k, v in state.items()), "T must learn"
        assert all(a is b for a, b in zip(self.network.parameters(), self.t_params))
        return fusion
