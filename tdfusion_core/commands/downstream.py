"""``tdfusion downstream``: compare fusion methods by training a fresh task network on each (the paper's Table 2)."""

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
    key_value_option,
    key_value_options,
    size_callback,
)


@click.command(name="downstream")
@click.option("--task", required=True, help="Registered task name (see `tdfusion plugins`).")
@click.option("--data", required=True, help="Dataset folder or registered dataset name: the labels.")
@click.option("--split", default="train", show_default=True, help="Split to train on.")
@click.option("--val-split", help="Split to evaluate on (default: hold out --val-fraction of the training split).")
@click.option(
    "--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.25, show_default=True
)
@click.option(
    "--fused",
    multiple=True,
    metavar="[NAME=]DIR",
    help="Fused images of one method, named like the dataset's samples; repeat to compare methods.",
)
@click.option(
    "--source",
    "sources",
    multiple=True,
    metavar="ir|vis|K",
    help="Also train on one source alone (a single-modality baseline); repeatable.",
)
@folder_option("--out", "out_dir", required=True)
@click.option("--steps", type=click.IntRange(min=1), default=200, show_default=True, help="Optimizer steps per method.")
@click.option(
    "--epochs", type=click.IntRange(min=1), help="Budget in passes over the training set (overrides --steps)."
)
@batch_size_option(2)
@click.option(
    "--size",
    callback=size_callback(),
    help="HxW the task sees (default: the dataset's task size, else the task's, else native).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Same initial weights and order for all methods.")
@device_option()
@key_value_option("--task-option", "task_opts", help="Task configuration (YAML value).")
@key_value_option("--data-option", "data_opts", help="Dataset options (YAML value).")
@click.option("--quiet", is_flag=True)
def downstream_command(
    task: str,
    data: str,
    split: str,
    val_split: str | None,
    val_fraction: float,
    fused: tuple[str, ...],
    sources: tuple[str, ...],
    out_dir: Path,
    steps: int,
    epochs: int | None,
    batch_size: int,
    size: tuple[int, int] | None,
    seed: int,
    device: str,
    task_opts: tuple[str, ...],
    data_opts: tuple[str, ...],
    quiet: bool,
) -> None:
    """Train a fresh TASK network on the images of each method for the same budget and compare its task metrics.

    Every method starts from the same random initialisation (--seed) and sees the same samples in the same order;
    only the images differ. Writes OUT/downstream.md, .csv and .json (best bold, second underlined).
    """
    from tdfusion_core.apps.downstream import DownstreamError, DownstreamMethod, run_downstream, source_index
    from tdfusion_core.apps.evaluate import to_csv, to_json, to_markdown
    from tdfusion_core.commands.eval import _split_named
    from tdfusion_core.plugin.registry import RegistryError, resolve_dataset

    methods: list[DownstreamMethod] = []
    for value in fused:
        name, path = _split_named(value, "--fused")
        methods.append(DownstreamMethod(name, fused_dir=path))
    for value in sources:
        try:
            k = source_index(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--source") from None
        methods.append(DownstreamMethod(f"{value.strip()} only", source=k))
    if not methods:
        raise click.UsageError("give at least one --fused DIR or --source")
    try:
        options = key_value_options(data_opts, "--data-option")
        train_set = resolve_dataset(data, split=split, **options)
        val_set = resolve_dataset(data, split=val_split, **options) if val_split else None
        if epochs is not None:
            steps = epochs * -(-len(train_set) // batch_size)
        result = run_downstream(
            task,
            train_set,
            methods,
            val_set=val_set,
            val_fraction=val_fraction,
            steps=steps,
            batch_size=batch_size,
            size=size,
            seed=seed,
            device=device,
            task_options=key_value_options(task_opts, "--task-option"),
            dataset_name=Path(data).name or data,
            progress=None if quiet else lambda msg: click.echo(msg, err=True),
        )
    except (DownstreamError, RegistryError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "downstream.md").write_text(to_markdown([result.table]), encoding="utf-8")
    (out_dir / "downstream.csv").write_text(to_csv([result.table]), encoding="utf-8")
    report = to_json([result.table], extra={"run": result.as_dict()})
    (out_dir / "downstream.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    click.echo(to_markdown([result.table]), nl=False)


@hookimpl
def tdfusion_register_commands(cli: Any) -> None:
    cli.add_command(downstream_command)
