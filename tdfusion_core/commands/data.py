"""``tdfusion data``: generate synthetic scenes and check dataset folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from tdfusion_core import hookimpl
from tdfusion_core.commands.options import folder_option, json_option, size_callback


def _parse_sources(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    if len(names) < 2:
        raise click.BadParameter(f"name at least two source folders, comma-separated, got {value!r}")
    return names


@click.group(name="data")
def data_group() -> None:
    """Generate, inspect and check datasets."""


@data_group.command(name="synth")
@folder_option("--out", required=True, help="Output folder.")
@click.option("--n", "n", type=click.IntRange(min=1), default=64, show_default=True, help="Number of scenes.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the scenes.")
@click.option("--size", default="96x128", show_default=True, callback=size_callback(minimum=16), help="Scene size HxW.")
@click.option(
    "--split",
    default="train",
    show_default=True,
    help="Split folder to write; also mixed into the seed, so train and val scenes differ for one --seed.",
)
@click.option("--night-fraction", type=click.FloatRange(0, 1), default=0.5, show_default=True)
@click.option("--noise", type=click.FloatRange(0, 1), default=0.02, show_default=True, help="Sensor noise std.")
def synth_command(
    out: Path, n: int, seed: int, size: tuple[int, int], split: str, night_fraction: float, noise: float
) -> None:
    """Write synthetic IR/visible scenes: OUT/SPLIT/{ir,vi}/, masks in label/, YOLO boxes in labels/."""
    from tdfusion_core.data.synthetic import write_synthetic

    names = write_synthetic(out, n, seed=seed, size=size, split=split, night_fraction=night_fraction, noise=noise)
    nights = sum(name.endswith("N") for name in names)
    click.echo(f"wrote {len(names)} scenes ({nights} at night) of {size[0]}x{size[1]} to {out / split}")


@data_group.command(name="check")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--num-classes", type=click.IntRange(min=1), default=None, help="Check labels against this count.")
@click.option(
    "--sources", default="ir,vi", show_default=True, callback=_parse_sources, help="Source folders, comma-separated."
)
@click.option("--allow-empty", is_flag=True, help="Accept label files without boxes (images with no objects).")
@json_option("Print the problems as JSON.")
def check_command(
    path: Path, num_classes: int | None, sources: tuple[str, ...], allow_empty: bool, as_json: bool
) -> None:
    """Check a dataset folder (PATH/<split>/... or one split folder); exit code 1 if anything is wrong or no pair is
    found.

    Reports missing partners, size mismatches, unreadable or truncated files, mask values outside the class
    range, boxes outside the image or of non-positive size, and empty label files, each naming its file.
    """
    from tdfusion_core.data.check import check_dataset

    try:
        problems, counts = check_dataset(path, sources, num_classes, allow_empty=allow_empty)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        rows = [{"path": str(p.path), "kind": p.kind, "message": p.message} for p in problems]
        click.echo(json.dumps({"pairs": counts, "problems": rows}, indent=2))
    else:
        for p in problems:
            click.echo(str(p))
        total = sum(counts.values())
        splits = ", ".join(f"{Path(k).name}: {v}" for k, v in counts.items())
        summary = f"{total} pairs ({splits}); {len(problems)} problem(s)"
        failed = bool(problems) or total == 0
        if total == 0:
            summary += "; no image pairs found"
        click.echo(("FAILED: " if failed else "OK: ") + summary, err=failed)
    if problems or not sum(counts.values()):
        click.get_current_context().exit(1)


@hookimpl
def tdfusion_register_commands(cli: Any) -> None:
    cli.add_command(data_group)
