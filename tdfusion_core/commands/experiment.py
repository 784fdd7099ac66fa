"""``tdfusion experiment``: methods × seeds, trained, fused and scored alike; mean ± CI and paired comparisons."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from tdfusion_core import hookimpl
from tdfusion_core.commands.options import (
    device_option,
    folder_option,
    key_value_option,
    key_value_options,
    size_callback,
)

DEFAULT_METHODS = "tdfusion,I,ir,vis,mean,oracle"
#: without ground truth of which source shows what, there is no oracle
DEFAULT_METHODS_REAL = "tdfusion,I,ir,vis,mean"


def parse_seeds(value: str) -> list[int]:
    """``"3"`` -> ``[0, 1, 2]``; ``"0,4,7"`` -> ``[0, 4, 7]``."""
    try:
        seeds = [int(v) for v in value.split(",") if v.strip()] if "," in value else list(range(int(value)))
    except ValueError:
        raise click.BadParameter(
            f"expected a count (3) or a list (0,4,7), got {value!r}", param_hint="--seeds"
        ) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise click.BadParameter(f"seeds must be non-empty and distinct, got {value!r}", param_hint="--seeds")
    return seeds


@click.command(name="experiment")
@folder_option("--out", required=True, help="Results folder.")
@click.option(
    "--methods",
    help="Comma-separated built-in methods: tdfusion, equivariant, I..V (Table 3 ablations), ir, vis, max, mean, "
    f"oracle (synthetic scenes only). Default: {DEFAULT_METHODS} (real data: {DEFAULT_METHODS_REAL}).",
)
@click.option(
    "--fused",
    multiple=True,
    metavar="NAME=DIR",
    help="Also compare a folder of fused images (DIR, or DIR/<split>, named like the samples); repeatable.",
)
@click.option("--seeds", default="3", show_default=True, help="Number of seeds (0..N-1) or a list: 0,4,7.")
@click.option(
    "--budget",
    type=click.Choice(["smoke", "demo", "small", "paper"]),
    default="demo",
    show_default=True,
    help="Epochs, meta/fusion steps and downstream steps for every method alike.",
)
@click.option("--epochs", type=click.IntRange(min=1), help="Override the budget's epochs.")
@click.option("--meta-steps", type=click.IntRange(min=0), help="Override the budget's meta steps per epoch.")
@click.option("--fusion-steps", type=click.IntRange(min=1), help="Override the budget's fusion steps per epoch.")
@click.option("--downstream-steps", type=click.IntRange(min=1), help="Override the budget's downstream steps.")
@click.option("--max-images", type=click.IntRange(min=1), help="Real data: use the first N images of each split.")
@click.option(
    "--image-size",
    metavar="HxW",
    callback=size_callback(minimum=32),
    help="Real data: resize every image (and its labels) to HxW on load, for every method alike (a CPU budget).",
)
@click.option(
    "--holdout",
    type=click.IntRange(min=1),
    help="Real data with one split: hold out its last N images (the test split is not read).",
)
@click.option("--data", default="synthetic", show_default=True, help="Registered dataset or folder.")
@key_value_option("--data-option", help="Dataset option (e.g. root=/data/LLVIP).")
@click.option("--train-split", default="train", show_default=True)
@click.option("--test-split", default="test", show_default=True)
@click.option("--task", default="tiny-seg", show_default=True, help="Registered task (tiny-seg, yolo, segformer...).")
@key_value_option("--task-option", help="Task option.")
@key_value_option("--set", "settings", help="TrainConfig setting for trained methods.")
@click.option("--reference", help="Method the others are compared with (default: TDFusion).")
@click.option(
    "--fusion-metrics",
    default="EN,SF,SCD,VIF,Qabf,SSIM",
    show_default=True,
    help="Comma-separated fusion metrics of the held-out images, or 'none'.",
)
@device_option("cpu", help=None)
@click.option(
    "--report-only",
    is_flag=True,
    help="Run no cell: report the cells finished so far (an interrupted or running experiment).",
)
def experiment_command(
    out: Path,
    methods: str | None,
    fused: tuple[str, ...],
    seeds: str,
    budget: str,
    epochs: int | None,
    meta_steps: int | None,
    fusion_steps: int | None,
    downstream_steps: int | None,
    max_images: int | None,
    image_size: tuple[int, int] | None,
    holdout: int | None,
    data: str,
    data_option: tuple[str, ...],
    train_split: str,
    test_split: str,
    task: str,
    task_option: tuple[str, ...],
    settings: tuple[str, ...],
    reference: str | None,
    fusion_metrics: str,
    device: str,
    report_only: bool,
) -> None:
    """Run METHODS x SEEDS on the same data splits and compare them with confidence intervals.

    Each cell trains the method (if it is trained), fuses both splits, scores the held-out images with fusion
    metrics, trains a fresh task network on the method's images (the downstream protocol) and, for methods with a
    loss generator on synthetic scenes, measures G's preference score in both source orders. Finished cells are
    cached in OUT/cells and skipped on a rerun. Writes OUT/report.md, results.csv, comparison.csv, results.json
    and summary.png.
    """
    import attrs

    from tdfusion_core.apps.experiment import BUDGETS, ExperimentSpec, Method, builtin_method, run_experiment

    logging.basicConfig(level=logging.WARNING)
    if methods is None:
        methods = DEFAULT_METHODS if data == "synthetic" else DEFAULT_METHODS_REAL
    try:
        chosen = [builtin_method(k.strip()) for k in methods.split(",") if k.strip()]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--methods") from None
    for name, folder in key_value_options(fused, "--fused", dotted=False).items():
        chosen.append(Method(name, "folder", folder=str(folder)))
    b = BUDGETS[budget]
    changes: dict[str, Any] = {
        k: v
        for k, v in {
            "epochs": epochs,
            "meta_steps": meta_steps,
            "fusion_steps": fusion_steps,
            "downstream_steps": downstream_steps,
            "max_images": max_images,
            "image_size": image_size,
        }.items()
        if v is not None
    }
    if image_size is not None and data == "synthetic":
        raise click.BadParameter(
            "applies to real data; synthetic scenes take their size from --budget", param_hint="--image-size"
        )
    b = attrs.evolve(b, **changes)
    data_options = key_value_options(data_option, "--data-option")
    task_options = key_value_options(task_option, "--task-option")
    if data == "synthetic":
        data_options.setdefault("balanced", True)
        if task == "tiny-seg":
            task_options.setdefault("input_kind", "luminance")
            task_options.setdefault("width", 16)
            task_options.setdefault("lr", 3e-3)  # the downstream segmenter converges within a small budget
    train_options = key_value_options(settings, "--set")
    if data == "synthetic" and task == "tiny-seg":
        train_options.setdefault("lr_fusion", 1e-3)
        train_options.setdefault("lr_task", 1e-3)
    metrics = () if fusion_metrics.strip().lower() == "none" else tuple(m.strip() for m in fusion_metrics.split(","))
    # Each option passed on by name: alike in shape only to the other commands' calls of their functions.
    try:
        spec = ExperimentSpec(
            out=out,
            methods=chosen,
            seeds=parse_seeds(seeds),
            budget=b,
            data=data,
            data_options=data_options,
            train_split=train_split,
            test_split=test_split,
            task=task,
            task_options=task_options,
            train_options=train_options,
            device=device,
            fusion_metrics=metrics,
            reference=reference,
            holdout=holdout,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    run_experiment(spec, echo=click.echo, run_missing=not report_only)
    click.echo(f"report: {(out / 'report.md').resolve()}")


@hookimpl
def tdfusion_register_commands(cli: Any) -> None:
    cli.add_command(experiment_command)
