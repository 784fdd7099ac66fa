"""``tdfusion fuse``: fuse folders of infrared/visible pairs with a trained fusion network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from tdfusion_core import hookimpl
from tdfusion_core.commands.options import (
    batch_size_option,
    device_option,
    folder_option,
    json_option,
    precision_options,
    threads_option,
)


@click.command(name="fuse")
@folder_option("--ir", "ir_dir", required=True, help="Folder of infrared images.")
@folder_option(
    "--vis", "vis_dir", required=True, help="Folder of visible images, paired with --ir by file name (stem)."
)
@folder_option("--out", "out_dir", required=True, help="Output folder; Gray/, RGB/ and Weights/ are written inside it.")
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="tdfusion checkpoint, or a published ReFusion/TDFusion state dict (.pth).",
)
@device_option(help="auto (CUDA, then MPS, else CPU), cpu, cuda, cuda:1 ...")
@batch_size_option(1, help="Pairs per forward pass (only pairs of equal size share a batch).")
@precision_options(
    "Type the fusion network (and the loss generator for --save-weights) computes in; bf16/fp16 report their max "
    "difference to fp32 (fast on GPUs, slow on CPUs without native support)."
)
@click.option("--eager", is_flag=True, help="Run the network module as it is instead of ReFusion's fast exact pass.")
@threads_option()
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
@click.option(
    "--tile-size",
    type=click.IntRange(min=16),
    default=1024,
    show_default=True,
    help="Images larger than --max-pixels are fused in overlapping tiles of this side (bounds memory).",
)
@click.option(
    "--tile-overlap", type=click.IntRange(min=0), default=128, show_default=True, help="Overlap of the tiles (pixels)."
)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=1600 * 1600,
    show_default=True,
    help="Largest image (width x height) fused in one pass; larger ones are tiled.",
)
@json_option("Print the summary as one JSON object.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def fuse_command(
    ir_dir: Path,
    vis_dir: Path,
    out_dir: Path,
    checkpoint: Path,
    device: str,
    batch_size: int,
    precision: str,
    eager: bool,
    threads: int | None,
    save_weights: bool,
    resize: bool,
    overwrite: bool,
    no_normalize: bool,
    tile_size: int,
    tile_overlap: int,
    max_pixels: int,
    as_json: bool,
    quiet: bool,
) -> None:
    """Fuse every infrared/visible pair of two folders; writes OUT/Gray/NAME.png and, for colour input, OUT/RGB/.

    Exits with status 1 when a pair could not be read or fused to finite values (the others are still fused) or
    when the run is refused (size mismatch without --resize, existing output folder without --overwrite, an output
    folder that is an input folder, a wrong or non-finite checkpoint, a --device this machine lacks). Every image
    is written through a temporary file and a rename. Images larger than --max-pixels are fused in overlapping
    tiles, so any size fits in memory.
    """
    from tdfusion_core.apps.fuse import FusionInputError, fuse_images
    from tdfusion_core.plugin.registry import RegistryError
    from tdfusion_core.training.checkpoints import CheckpointError

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    try:
        summary = fuse_images(
            ir_dir,
            vis_dir,
            out_dir,
            checkpoint,
            device=device,
            batch_size=batch_size,
            save_weights=save_weights,
            overwrite=overwrite,
            resize=resize,
            progress=not quiet,
            normalize=not no_normalize,
            precision=precision,
            fast=not eager,
            tile_size=tile_size,
            tile_overlap=tile_overlap,
            max_pixels=max_pixels,
        )
    except (OSError, ValueError, FusionInputError, CheckpointError, RegistryError) as exc:
        # user errors (missing files, duplicate names, a bad checkpoint or --device, a full disk): one line
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(summary.as_dict()) if as_json else summary.format())
    if not summary.ok:
        raise SystemExit(1)


@hookimpl
def tdfusion_register_commands(cli: Any) -> None:
    cli.add_command(fuse_command)
