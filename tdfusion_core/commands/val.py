"""``tdfusion val``: evaluate a finished (or running) training run on a split of its data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from tdfusion_core import hookimpl
from tdfusion_core.commands.options import device_option, folder_option, json_option


def evaluate_run(
    run: Path,
    split: str = "val",
    checkpoint: str = "best",
    device: str = "auto",
    max_samples: int | None = None,
    data: str | None = None,
) -> dict[str, float]:
    """Task metrics of T and fusion metrics of F of run directory ``run`` on ``split`` of its data.

    ``checkpoint`` is ``best`` (``checkpoints/best.pt``, else ``last.pt``), ``last`` or a path of a training
    checkpoint of this run. ``data`` replaces the run's data (a folder or registered name) when given.
    """
    import torch

    from tdfusion_core.plugin.registry import resolve_dataset
    from tdfusion_core.training.config import TrainConfig
    from tdfusion_core.training.trainer import MetaTrainer
    from tdfusion_core.training.validation import Validator

    saved = run / "config.yaml"
    if not saved.is_file():
        raise FileNotFoundError(f"{run} is not a run directory: no config.yaml in it")
    config = TrainConfig.from_yaml(saved)
    changes: dict[str, Any] = {"device": device, "progress": False, "log_images": False, "val_split": None}
    if data is not None:
        changes["data"] = data
    config = config.evolve(**changes)
    if checkpoint in ("best", "last"):
        path = run / "checkpoints" / f"{checkpoint}.pt"
        if checkpoint == "best" and not path.is_file():
            path = run / "checkpoints" / "last.pt"
    else:
        path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if str(config.data).startswith("python:"):
        raise ValueError(
            f"{run} was trained on a dataset instance ({config.data[len('python:') :]}): give --data FOLDER or NAME"
        )
    dataset = resolve_dataset(config.data, split=split, **config.data_options)
    if len(dataset) == 0:
        raise ValueError(f"split {split!r} of {config.data} is empty")
    trainer = MetaTrainer(config, train_set=dataset)  # the split stands in for the training set: nothing trains
    state = torch.load(path, map_location=trainer.device, weights_only=True)
    trainer.load_state_dict(state)
    validator = Validator(dataset, config.val_fusion_metrics, max_samples)
    return validator.evaluate(trainer)


@click.command(name="val")
@folder_option(
    "--run",
    "run",
    exists=True,
    required=True,
    help="Run directory of `tdfusion train` (holds config.yaml and checkpoints/).",
)
@click.option("--split", default="val", show_default=True, help="Split of the run's data to evaluate.")
@click.option(
    "--checkpoint",
    default="best",
    show_default=True,
    help="best (checkpoints/best.pt, else last.pt), last, or a path to a training checkpoint.",
)
@click.option("--data", help="Evaluate on this folder or registered dataset instead of the run's data.")
@device_option()
@click.option("--max-samples", type=click.IntRange(min=1), help="Evaluate only the first N samples.")
@json_option("Print the metrics as JSON.")
def val_command(
    run: Path, split: str, checkpoint: str, data: str | None, device: str, max_samples: int | None, as_json: bool
) -> None:
    """Evaluate a training run: T on F's fused images of a split (task metrics) and fusion metrics of F."""
    from tdfusion_core.training.config_io import ConfigError

    try:
        metrics = evaluate_run(run, split, checkpoint, device, max_samples, data)
    except (ConfigError, FileNotFoundError, LookupError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
        return
    width = max((len(k) for k in metrics), default=0)
    click.echo(f"{run} ({checkpoint}) on split {split!r}:")
    for key, value in metrics.items():
        click.echo(f"  {key:<{width}}  {value:10.4f}")


@hookimpl
def tdfusion_register_commands(cli: Any) -> None:
    cli.add_command(val_command)
