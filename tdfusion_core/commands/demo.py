"""``tdfusion demo``: the built-in end-to-end demo on synthetic scenes (CPU, no downloads)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from tdfusion_core import hookimpl
from tdfusion_core.commands.options import device_option, folder_option


@click.command(name="demo")
@folder_option(
    "--out",
    default=Path("runs/demo"),
    help="Folder for report.md, figures, results.json and every cell of the experiment.",
)
@click.option("--quick", is_flag=True, help="A one-minute version (tiny images and budget), as used in the tests.")
@click.option("--epochs", type=click.IntRange(min=1), help="Override the number of training epochs.")
@click.option("--seeds", type=click.IntRange(min=1), help="Seeds of TDFusion and fixed ½ (default 3; --quick: 2).")
@device_option("cpu", help=None)
@click.option("--overwrite", is_flag=True, help="Replace an existing demo in --out.")
def demo_command(out: Path, quick: bool, epochs: int | None, seeds: int | None, device: str, overwrite: bool) -> None:
    """A small seeded experiment: TDFusion vs fixed weights ½ on synthetic scenes, single sources and the oracle.

    Writes OUT/report.md: mean ± 95 % confidence interval over the seeds of the downstream mIoU and the fusion
    metrics, the paired difference TDFusion − fixed ½ with a verdict the interval allows, G's preference score in
    both source orders, where G weights each source, weight maps and fused images.
    """
    import shutil

    from tdfusion_core.apps.demo import DemoSettings, run_demo

    logging.basicConfig(level=logging.WARNING)
    parts = ("runs", "cells", "images", "sources")
    if (out / "report.md").exists() or any((out / d).exists() for d in parts):
        if not overwrite:
            raise click.UsageError(f"{out} already holds a demo; pass --overwrite or another --out")
        for d in parts:
            shutil.rmtree(out / d, ignore_errors=True)
    changes: dict[str, Any] = {"out": out, "device": device}
    if epochs is not None:
        changes["epochs"] = epochs
    if seeds is not None:
        changes["seeds"] = seeds
    settings = DemoSettings.quick(**changes) if quick else DemoSettings(**changes)
    run_demo(settings, echo=click.echo)


@hookimpl
def tdfusion_register_commands(cli: Any) -> None:
    cli.add_command(demo_command)
