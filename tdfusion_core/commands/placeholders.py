"""Subcommands announced but not built yet; each fails with a clear message until its module replaces it."""

from __future__ import annotations

from typing import Any

import click

from tdfusion_core import hookimpl

PENDING: dict[str, str] = {
    "train": "Meta-train a fusion network with a task-driven learnable loss.",
    "fuse": "Fuse infrared/visible image folders with a trained fusion network.",
    "eval": "Compute fusion and task metrics of fused images.",
    "data": "Generate, inspect and check datasets.",
    "demo": "Run the built-in end-to-end demo on synthetic scenes.",
    "bench": "Benchmark fusion inference and the meta step.",
}


def _placeholder(name: str, summary: str) -> click.Command:
    @click.command(
        name=name,
        help=f"{summary}\n\nNot available in this version yet.",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )
    def command() -> None:
        raise click.ClickException(f"`tdfusion {name}` is not implemented in this version yet")

    return command


@hookimpl(trylast=True)
def tdfusion_register_commands(cli: Any) -> None:
    for name, summary in PENDING.items():
        if name not in cli.commands:
            cli.add_command(_placeholder(name, summary))
