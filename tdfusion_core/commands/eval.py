"""``tdfusion eval``: fusion metrics of fused-image folders (or of a checkpoint) as Markdown, CSV and JSON tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tdfusion_core import hookimpl
from tdfusion_core.commands.options import device_option, folder_option


def _split_named(value: str, option: str) -> tuple[str, Path]:
    """``name=PATH`` -> (name, PATH); a bare ``PATH`` is named after its last folder / file stem."""
    if "=" in value:
        name, _, raw = value.partition("=")
        if not name.strip():
            raise click.BadParameter(f"empty method name in {value!r}", param_hint=option)
        return name.strip(), Path(raw)
    path = Path(value)
    return (path.stem if path.suffix else path.name) or str(path), path


def _parse_metrics(value: str) -> list[str]:
    from tdfusion_core.metrics.fusion import METRICS, TABLE1

    if value.strip().lower() == "table1":
        return list(TABLE1)
    if value.strip().lower() == "all":
        return list(METRICS)
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise click.BadParameter(
            f"unknown metric(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(METRICS)}, or 'table1', 'all'",
            param_hint="--metrics",
        )
    return names


@click.command(name="eval")
@folder_option("--ir", "ir_dir", required=True, help="Infrared images.")
@folder_option("--vis", "vis_dir", required=True, help="Visible images.")
@click.option(
    "--fused",
    "fused",
    multiple=True,
    metavar="[NAME=]DIR",
    help="Folder of fused images of one method, paired with the sources by file name; repeat to compare methods.",
)
@click.option(
    "--checkpoint",
    "checkpoints",
    multiple=True,
    metavar="[NAME=]PATH",
    help="Fuse the source folders with this checkpoint first (into OUT/fused/NAME/), then evaluate; repeatable.",
)
@folder_option("--out", "out_dir", required=True, help="Output folder.")
@click.option(
    "--metrics",
    "metrics",
    default="table1",
    show_default=True,
    help="Comma-separated metric names (EN,SF,SCD,VIF,Qabf,SSIM,SD,AG,MI,PSNR,CC,MS-SSIM,VIF-sum,...), "
    "'table1' (the paper's six) or 'all'.",
)
@click.option("--per-image", is_flag=True, help="Also write per_image.csv with every image's values.")
@click.option("--plot", is_flag=True, help="Also write metrics.png, a bar chart per metric (needs matplotlib).")
@device_option(help="Device for the metrics and F: auto (CUDA, MPS, CPU), cpu, cuda.")
@click.option("--dataset", help="Dataset name in the tables (default: the folder above --ir).")
@click.option("--quiet", is_flag=True, help="No per-image progress lines.")
def eval_command(
    ir_dir: Path,
    vis_dir: Path,
    fused: tuple[str, ...],
    checkpoints: tuple[str, ...],
    out_dir: Path,
    metrics: str,
    per_image: bool,
    plot: bool,
    device: str,
    dataset: str | None,
    quiet: bool,
) -> None:
    """Compute fusion metrics of fused images against their infrared and visible sources.

    Writes OUT/metrics.md, OUT/metrics.csv and OUT/metrics.json (OUT/per_image.csv with --per-image, OUT/metrics.png
    with --plot): the mean
    over the images common to every folder, one row per method, best in bold and second best underlined. RGB images
    are scored on their luminance (Y of YCbCr).
    """
    from tdfusion_core.apps.evaluate import EvaluationInputError, evaluate_folders, to_markdown, write_reports
    from tdfusion_core.common.io import ImageReadError

    names = _parse_metrics(metrics)
    methods: dict[str, Path] = {}
    for value in fused:
        name, path = _split_named(value, "--fused")
        if name in methods:
            raise click.BadParameter(f"method name {name!r} given twice", param_hint="--fused")
        methods[name] = path
    for value in checkpoints:
        name, path = _split_named(value, "--checkpoint")
        if name in methods:
            raise click.BadParameter(f"method name {name!r} given twice", param_hint="--checkpoint")
        methods[name] = _fuse_checkpoint(ir_dir, vis_dir, out_dir / "fused" / name, path, device, quiet)
    if not methods:
        raise click.UsageError("give at least one --fused DIR or --checkpoint PATH")
    try:
        result = evaluate_folders(
            ir_dir,
            vis_dir,
            methods,
            metrics=names,
            device=device,
            dataset=dataset,
            progress=None if quiet else lambda msg: click.echo(msg, err=True),
        )
    except (EvaluationInputError, ImageReadError, FileNotFoundError, KeyError, ValueError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from exc
    for label, missing in result.missing.items():
        click.echo(
            f"warning: {len(missing)} image name(s) not in {label}, left out: {', '.join(missing[:10])}", err=True
        )
    extra = {
        "sources": {"ir": str(ir_dir), "vis": str(vis_dir)},
        "fused": {name: str(path) for name, path in methods.items()},
        "colour": "RGB images are scored on their luminance Y (BT.601), rounded to 0..255",
    }
    files = write_reports([result], out_dir, per_image=per_image, extra=extra)
    if plot:
        from tdfusion_core.apps.figures import metrics_bar_chart

        try:
            files["plot"] = metrics_bar_chart(result.means, out_dir / "metrics.png", metrics=names, title=result.name)
        except ImportError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(to_markdown([result]), nl=False)
    click.echo("wrote " + ", ".join(str(p) for p in files.values()), err=True)


def _fuse_checkpoint(ir_dir: Path, vis_dir: Path, out: Path, checkpoint: Path, device: str, quiet: bool) -> Path:
    """Fuse the source folders with ``checkpoint`` into ``out`` (``fuse_images`` defaults: each image min-max
    stretched as the reference ``test.py``) and return the folder of fused luminances."""
    from tdfusion_core.apps.fuse import fuse_images

    try:
        summary = fuse_images(ir_dir, vis_dir, out, checkpoint, device=device, overwrite=True, progress=not quiet)
    except (OSError, ValueError, LookupError) as exc:  # FusionInputError, CheckpointError: ValueError; RegistryError
        raise click.ClickException(f"fusing with {checkpoint} failed: {exc}") from exc
    if summary.failed:
        raise click.ClickException(
            f"fusing with {checkpoint} failed for: " + "; ".join(f"{k}: {v}" for k, v in summary.failed.items())
        )
    return out / "Gray"


@hookimpl
def tdfusion_register_commands(cli: Any) -> None:
    cli.add_command(eval_command)
