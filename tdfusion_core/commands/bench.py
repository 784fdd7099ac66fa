"""``tdfusion bench``: benchmarks; ``tdfusion bench fuse`` times fusion inference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from tdfusion_core import hookimpl
from tdfusion_core.commands.options import (
    batch_size_option,
    default_allocator_option,
    device_option,
    json_option,
    precision_options,
    size_callback,
    threads_option,
)


@click.group(name="bench")
def bench_group() -> None:
    """Benchmark fusion inference and the meta step."""


@bench_group.command(name="fuse")
@click.option("--size", default="480x640", show_default=True, callback=size_callback(), help="Image size HEIGHTxWIDTH.")
@device_option(help="auto (CUDA, then MPS, else CPU), cpu, cuda:1 ...")
@click.option("--compile", "use_compile", is_flag=True, help="torch.compile the network.")
@click.option("--channels-last", is_flag=True, help="Channels-last memory format.")
@batch_size_option(1)
@click.option("--iters", type=click.IntRange(min=1), default=10, show_default=True, help="Timed forward passes.")
@click.option("--warmup", type=click.IntRange(min=1), default=2, show_default=True, help="Untimed passes first.")
@click.option("--arch", default="refusion", show_default=True, help="Registered fusion architecture (random weights).")
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Load the network from a checkpoint instead of random weights.",
)
@threads_option()
@click.option("--eager", is_flag=True, help="Time the network module as it is instead of ReFusion's fast pass.")
@precision_options("Compute type.")
@click.option("--strip-rows", type=click.IntRange(min=1), default=None, help="Fast pass by strips of N rows.")
@click.option(
    "--compare",
    default=None,
    metavar="CONFIG",
    help="Also time CONFIG interleaved with this one, e.g. 'eager' or 'fast,bf16' (words: fast, eager, fp32, bf16, "
    "fp16, compile, channels-last, strips=N), and print the speed-up.",
)
@default_allocator_option()
@json_option()
def bench_fuse_command(
    size: tuple[int, int],
    device: str,
    use_compile: bool,
    channels_last: bool,
    batch_size: int,
    iters: int,
    warmup: int,
    arch: str,
    checkpoint: Path | None,
    threads: int | None,
    eager: bool,
    precision: str,
    strip_rows: int | None,
    compare: str | None,
    default_allocator: bool,
    as_json: bool,
) -> None:
    """Time the fusion network's forward pass: ms/image, images/s, peak memory, difference to fp32 eager."""
    from tdfusion_core.apps.bench.fuse import FuseConfig, bench_fuse, format_result

    if compare is not None:
        try:
            FuseConfig.parse(compare)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--compare") from None
    # Each option passed on by name: alike in shape only to the other commands' calls of their functions.
    result = bench_fuse(
        size=size,
        device=device,
        compile=use_compile,
        channels_last=channels_last,
        batch_size=batch_size,
        iters=iters,
        warmup=warmup,
        arch=arch,
        checkpoint=checkpoint,
        threads=threads,
        fast=not eager,
        precision=precision,
        strip_rows=strip_rows,
        compare=compare,
        keep_memory=not default_allocator,
    )
    click.echo(json.dumps(result) if as_json else format_result(result))


@hookimpl
def tdfusion_register_commands(cli: Any) -> None:
    from tdfusion_core.apps.bench.data import data_command  # tdfusion bench data (reading and building batches)
    from tdfusion_core.apps.bench.meta import meta_command  # tdfusion bench meta (the training steps)
    from tdfusion_core.apps.bench.scaling import scaling_command  # tdfusion bench scaling (multi-process training)
    from tdfusion_core.apps.bench.suite import suite_command  # tdfusion bench suite (every target, GPU)
    from tdfusion_core.apps.bench.trees import trees_command  # tdfusion bench trees (two commits side by side)

    bench_group.add_command(suite_command)
    bench_group.add_command(meta_command)
    bench_group.add_command(data_command)
    bench_group.add_command(scaling_command)
    bench_group.add_command(trees_command)
    cli.add_command(bench_group)
