"""``tdfusion demo``: the built-in end-to-end demo on synthetic scenes (CPU, no downloads)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from tdfusion_core import hookimpl


@click.command(name="demo")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs/demo"),
    show_default=True,
    help="Folder for report.md, figures, results.json and the two training runs.",
)
@click.option("--quick", is_flag=True, help="A one-minute version (tiny images and budget), as used in the tests.")
@click.option("--epochs", type=click.IntRange(min=1), help="Override the number of training epochs.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing demo in --out.")
def demo_command(out: Path, quick: bool, epochs: int | None, seed: int, device: str, overwrite: bool) -> None:
    """Train TDFusion on synthetic scenes and compare it with fixed weights ½ and each single source.

    Writes OUT/report.md: fusion metrics and downstream mIoU side by side, where the learned loss prefers each
    source (warm objects at night vs markings), weight maps and fused images.
    """
    import shutil

    from tdfusion_core.demo import DemoSettings, run_demo

    logging.basicConfig(level=logging.WARNING)
    if (out / "report.md").exists() or any((out / d).exists() for d in ("tdfusion", "fixed")):
        if not overwrite:
            raise click.UsageError(f"{out} already holds a demo; pass --overwrite or another --out")
        for d in ("tdfusion", "fixed"):
            shutil.rmtree(out / d, ignore_errors=True)
    changes: dict[str, Any] = {"out": out, "seed": seed, "device": device}
    if epochs is not None:
        changes["epochs"] = epochs
    settings = DemoSettings.quick(**changes) if quick else DemoSettings(**changes)
    run_demo(settings, echo=click.echo)


@hookimpl
def tdfusion_register_commands(cli: Any) -> None:
    cli.add_command(demo_command)
