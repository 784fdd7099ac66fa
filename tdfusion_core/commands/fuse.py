"""``tdfusion fuse``: fuse folders of infrared/visible pairs with a trained fusion network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from tdfusion_core import hookimpl


@click.command(name="fuse")
@click.option(
    "--ir", "ir_dir", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder of infrared images."
)
@click.option(
    "--vis",
    "vis_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder of visible images, paired with --ir by file name (stem).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Output folder; Gray/, RGB/ and Weights/ are written inside it.",
)
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="tdfusion checkpoint, or a published ReFusion/TDFusion state dict (.pth).",
)
@click.option(
    "--device", default="auto", show_default=True, help="auto (CUDA, then MPS, else CPU), cpu, cuda, cuda:1 ..."
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Pairs per forward pass (only pairs of equal size share a batch).",
)
@click.option("--amp", is_flag=True, help="Run the networks under autocast (see --amp-dtype).")
@click.option(
    "--amp-dtype",
    type=click.Choice(["auto", "bfloat16", "float16"]),
    default="auto",
    show_default=True,
    help="Autocast dtype: auto is float16 on CUDA (closer to float32), bfloat16 on the CPU (fast only on CPUs "
    "with native bfloat16 support).",
)
@click.option(
    "--save-weights", is_flag=True, help="Also write the loss generator's weight maps as colour-mapped PNGs (Weights/)."
)
@click.option(
    "--resize", is_flag=True, help="Resample a visible image onto its infrared partner's grid when their sizes differ."
)
@click.option("--overwrite", is_flag=True, help="Allow writing into an output folder that is not empty.")
@click.option(
    "--no-normalize",
    is_flag=True,
    help="Write the raw network output instead of stretching each image to [0, 1] as the reference does.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def fuse_command(
    ir_dir: Path,
    vis_dir: Path,
    out_dir: Path,
    checkpoint: Path,
    device: str,
    batch_size: int,
    amp: bool,
    amp_dtype: str,
    save_weights: bool,
    resize: bool,
    overwrite: bool,
    no_normalize: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Fuse every infrared/visible pair of two folders; writes OUT/Gray/NAME.png and, for colour input, OUT/RGB/.

    Exits with status 1 when a pair could not be read (the others are still fused) or when the run is refused
    (size mismatch without --resize, existing output folder without --overwrite, wrong checkpoint).
    """
    from tdfusion_core.checkpoints import CheckpointError
    from tdfusion_core.fusion import FusionInputError, fuse_images
    from tdfusion_core.registry import RegistryError

    try:
        summary = fuse_images(
            ir_dir,
            vis_dir,
            out_dir,
            checkpoint,
            device=device,
            batch_size=batch_size,
            amp=amp,
            amp_dtype=amp_dtype,
            save_weights=save_weights,
            overwrite=overwrite,
            resize=resize,
            progress=not quiet,
            normalize=not no_normalize,
        )
    except (FileNotFoundError, FileExistsError, FusionInputError, CheckpointError, RegistryError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(summary.as_dict()) if as_json else summary.format())
    if not summary.ok:
        raise SystemExit(1)


@hookimpl
def tdfusion_register_commands(cli: Any) -> None:
    cli.add_command(fuse_command)
