"""A working plugin: registers task ``constant-test`` and command ``hello-test``."""

from __future__ import annotations

from typing import Any

import click
import torch

from tdfusion_core import hookimpl
from tdfusion_core.kernel.task import Task


class ConstantTask(Task):
    """Loss = mean squared distance of the image to 0.5 through a 1x1 conv."""

    target_kind = "none"

    def build_network(self) -> torch.nn.Module:
        return torch.nn.Conv2d(3, 1, 1)

    def compute_loss(self, network: torch.nn.Module, images: torch.Tensor, targets: Any) -> torch.Tensor:
        return ((network(images) - 0.5) ** 2).mean()

    def evaluate(self, network: torch.nn.Module, batches: Any) -> dict[str, float]:
        return {"n": float(sum(1 for _ in batches))}


@hookimpl
def tdfusion_register_tasks() -> dict[str, Any]:
    return {"constant-test": ConstantTask}


@hookimpl
def tdfusion_register_commands(cli: Any) -> None:
    @cli.command(name="hello-test")
    def hello() -> None:
        """Say hello (test plugin)."""
        click.echo("hello from testplugin")
