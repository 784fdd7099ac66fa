"""Helpers of the multi-process tests: a float64 setup without BatchNorm and a worker that ``mp.spawn`` starts.

The worker sets the environment torchrun would set (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` =
127.0.0.1, ``MASTER_PORT``), so the trainer's own torchrun detection joins the gloo process group.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as nnf

from tdfusion_core.data.sample import Sample
from tdfusion_core.kernel.task import Task
from tdfusion_core.training.config import TrainConfig
from tdfusion_core.training.trainer import MetaTrainer
from tests.trainer_utils import BlobScenes, SmallFusion, SmallGenerator, small_settings


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    """The variables torchrun sets for one process, on the loopback interface only."""
    env = {
        "RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(world_size),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    if os.uname().sysname == "Linux":
        env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


class PlainSegNet(nn.Module):
    """Two convolutions, no BatchNorm: per-shard and union updates agree exactly."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(6, num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


class PlainSegTask(Task):
    """Segmentation with :class:`PlainSegNet`, cross-entropy (a mean over pixels), pixel accuracy."""

    name = "plain-seg"
    input_kind = "rgb"
    target_kind = "mask"

    def build_network(self) -> nn.Module:
        return PlainSegNet(int(self.num_classes or 3))

    def compute_loss(self, network: nn.Module, images: torch.Tensor, targets: Any) -> torch.Tensor:
        return nnf.cross_entropy(network(images), targets.long())

    @torch.no_grad()
    def evaluate(self, network: nn.Module, batches: Iterable[tuple[torch.Tensor, Any]]) -> dict[str, float]:
        right = total = 0
        for images, targets in batches:
            right += int((network(images).argmax(1) == targets).sum())
            total += targets.numel()
        return {"pixel_acc": right / max(total, 1)}


class DoubleScenes(BlobScenes):
    """:class:`BlobScenes` in float64; the sources of item ``nan_item`` (if any) are NaN."""

    def __init__(self, n: int = 8, nan_item: int | None = None) -> None:
        super().__init__(n)
        self.nan_item = nan_item

    def __getitem__(self, i: int) -> Sample:
        s = super().__getitem__(i)
        sources = s.sources.double()
        if i == self.nan_item:
            sources[:] = float("nan")
        return Sample(sources, s.chroma.double(), s.target, s.name)


def float64_trainer(
    out_dir: str | Path | None = None, resume: bool = False, nan_item: int | None = None, **overrides: Any
) -> MetaTrainer:
    """Float64 MetaTrainer on small modules without BatchNorm, global batch 2 with the Switch (4 items)."""
    settings = small_settings(
        task_options={},  # T is the PlainSegTask given below, not a registered task
        epochs=1,
        fusion_steps=2,
        batch_size=2,
        seed=0,
        deterministic=False,  # CPU kernels here are deterministic; the flag costs a 20 s import per process
        log_images=False,
    )
    settings.update(overrides)
    config = TrainConfig(**settings)
    torch.manual_seed(0)
    task = PlainSegTask(num_classes=3)
    task.network.double()
    return MetaTrainer(
        config,
        task=task,
        train_set=DoubleScenes(8, nan_item),
        fusion_net=SmallFusion().double(),
        loss_generator=SmallGenerator().double(),
        out_dir=out_dir,
        resume=resume,
    )


def trainer_state(trainer: MetaTrainer) -> dict[str, dict[str, torch.Tensor]]:
    """Copies of F's, G's and T's state dicts."""
    return {
        name: {k: v.detach().clone().cpu() for k, v in module.state_dict().items()}
        for name, module in (
            ("fusion_net", trainer.fusion_net),
            ("loss_generator", trainer.loss_generator),
            ("task_net", trainer.task.network),
        )
    }


def run_scenarios(rank: int, world_size: int, port: int, scenarios: list[dict[str, Any]], out: str) -> None:
    """``mp.spawn`` target: run each scenario's trainer; every rank saves its final state and history."""
    os.environ.update(torchrun_env(rank, world_size, port))
    torch.set_num_threads(1)
    from tdfusion_core.training.distributed import shutdown_distributed

    try:
        for scenario in scenarios:
            scenario = dict(scenario)
            name = scenario.pop("name")
            trainer = float64_trainer(**scenario)
            assert trainer.dist.world_size == world_size and trainer.dist.rank == rank
            history = trainer.fit()
            torch.save(
                {
                    "state": trainer_state(trainer),
                    "opt_task": trainer.opt_task.state_dict(),
                    "history": history,
                    "epoch": trainer.epoch,
                },
                Path(out) / f"{name}.rank{rank}.pt",
            )
    finally:
        shutdown_distributed()
