"""``tdfusion train``: meta-train a fusion network with a task-driven learnable loss (Algorithm 1)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from tdfusion_core import hookimpl
from tdfusion_core.commands.options import device_option, folder_option, key_value_option


def next_run_dir(path: Path) -> Path:
    """``path`` when it is free (missing or empty), else ``path2``, ``path3``, ... as ultralytics does."""
    if not path.exists() or not any(path.iterdir()):
        return path
    for n in range(2, 10_000):
        candidate = path.with_name(f"{path.name}{n}")
        if not candidate.exists() or not any(candidate.iterdir()):
            return candidate
    raise click.ClickException(f"no free run directory next to {path} (tried up to {path.name}9999)")


def resolve_config(
    config_path: Path | None,
    saved: dict[str, Any] | None,
    given: dict[str, Any],
    overrides: tuple[str, ...],
    trust_checkpoint: bool = False,
) -> Any:
    """Defaults (those of ``profile``), then the run's saved settings (``--resume``), then ``--config``, then
    options, then ``--set``. Trusting a task checkpoint comes only from ``--trust-checkpoint``: a config file that
    sets it is refused, and a saved run's setting is dropped."""
    from tdfusion_core.training.config import TrainConfig
    from tdfusion_core.training.config_io import apply_override, load_yaml_file
    from tdfusion_core.training.trust import refuse_trust_from_file, with_trust, without_trust

    values: dict[str, Any] = {}  # unset keys take their defaults, profile-dependent ones from the chosen profile
    if saved is not None:
        values.update(without_trust(saved))
    source = "the command line"
    if config_path is not None:
        from_file = load_yaml_file(config_path)
        try:
            refuse_trust_from_file(from_file, str(config_path))
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        values.update(from_file)
        source = str(config_path)
    values.update({k: v for k, v in given.items() if v is not None})
    for pair in overrides:
        apply_override(values, pair)
    if overrides:
        source = f"{source} and --set" if config_path is not None else "--set"
    if trust_checkpoint:
        values = with_trust(values)
    return TrainConfig.from_dict(values, source=source)


def saved_settings(out_dir: Path) -> dict[str, Any]:
    """The settings of the run in ``out_dir``: its ``config.yaml``, or the checkpoint's own copy when that is lost."""
    from tdfusion_core.training.config import TrainConfig
    from tdfusion_core.training.run_files import load_training_state

    saved = out_dir / "config.yaml"
    if saved.is_file():
        return dict(TrainConfig.from_yaml(saved).to_dict())
    state, _ = load_training_state(out_dir / "checkpoints" / "last.pt")
    return dict(state.get("config") or {})


@click.command(name="train")
@click.option("--task", help="Registered task name (see `tdfusion plugins`). Default: from --config, else tiny-seg.")
@click.option("--data", help="Dataset folder or registered dataset name (synthetic, llvip, msrs, ...).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="YAML settings.")
@device_option(None, help="auto (default: CUDA, then MPS, else CPU), cpu, cuda, cuda:1, mps.")
@click.option("--amp/--no-amp", default=None, help="bfloat16 autocast for forward passes.")
@folder_option(
    "--out", "out_dir", default=Path("runs/train"), help="Run directory: config, checkpoints, logs, images, model.pt."
)
@click.option("--resume", is_flag=True, help="Continue from <out>/checkpoints/last.pt.")
@click.option(
    "--exist-ok",
    is_flag=True,
    help="Write into --out even if it holds files (replacing a run there); by default a busy --out becomes "
    "<out>2, <out>3, ...",
)
@click.option(
    "--trust-checkpoint",
    is_flag=True,
    help="Let the task load its pretrained checkpoint with a full unpickle, which runs code from the file. Only for "
    "files you trust; a config file cannot set this.",
)
@click.option("--deterministic", is_flag=True, default=None, help="Deterministic kernels (bit-reproducible on CPU).")
@click.option("--epochs", type=int, help="Number of epochs L.")
@click.option("--meta-steps", type=int, help="Meta steps M per epoch.")
@click.option("--fusion-steps", type=int, help="Fusion-phase steps per epoch (default: the whole training set).")
@click.option("--seed", type=int, help="Random seed.")
@key_value_option(
    "--set",
    "overrides",
    help="Any setting (value read as YAML; KEY.SUB for one entry of a mapping), e.g. --set crop_size=128 "
    "--set lr_fusion=1e-4 --set task_options.num_classes=1. Keys: docs/config.md.",
)
def train_command(
    task: str | None,
    data: str | None,
    config_path: Path | None,
    device: str | None,
    amp: bool | None,
    out_dir: Path,
    resume: bool,
    exist_ok: bool,
    trust_checkpoint: bool,
    deterministic: bool | None,
    epochs: int | None,
    meta_steps: int | None,
    fusion_steps: int | None,
    seed: int | None,
    overrides: tuple[str, ...],
) -> None:
    """Meta-train a fusion network with a task-driven learnable loss.

    Settings come from the defaults (those of the released TDFusion code), then --config, then the options given
    here. With --resume the settings saved in the run directory are used and options given here override them.
    """
    from tdfusion_core.plugin import registry
    from tdfusion_core.training.config_io import ConfigError, check_task_options
    from tdfusion_core.training.trainer import MetaTrainer, TrainingDivergedError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    given = {
        "task": task,
        "data": data,
        "device": device,
        "amp": amp,
        "deterministic": deterministic,
        "epochs": epochs,
        "meta_steps": meta_steps,
        "fusion_steps": fusion_steps,
        "seed": seed,
    }
    try:
        config = resolve_config(
            config_path, saved_settings(out_dir) if resume else None, given, overrides, trust_checkpoint
        )
        if not config.tasks and not config.task.startswith("python:"):
            check_task_options(config.task, registry.lookup("task", config.task), config.task_options)
    except (ConfigError, LookupError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    if not resume and not exist_ok:
        chosen = next_run_dir(out_dir)
        if chosen != out_dir:
            click.echo(f"{out_dir} is not empty: this run goes to {chosen} (--exist-ok to reuse {out_dir})")
            out_dir = chosen
    try:
        trainer = MetaTrainer(config, out_dir=out_dir, resume=resume)
        say = click.echo if trainer.is_main_process else (lambda _message: None)  # once under torchrun
        say(
            f"training task {config.task!r} on {config.data!r} ({len(trainer.train_set)} samples, "
            f"{trainer.num_sources} sources"
            + (f", {len(trainer.validator)} for validation" if trainer.validator is not None else ", no validation")
            + f") on {trainer.device}; run directory {out_dir}"
        )
        history = trainer.fit()
    except TrainingDivergedError as exc:
        raise click.ClickException(str(exc)) from exc
    except (FileNotFoundError, LookupError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    last = history[-1] if history else {}
    weights = ", ".join(f"{last[k]:.3f}" for k in sorted(last) if k.startswith("weight/"))
    say(f"done: {trainer.epoch} epochs; mean source weights [{weights}]; model: {out_dir / 'model.pt'}")
    best = trainer.validator.best if trainer.validator is not None else None
    if best is not None:
        say(f"best: val {best[0]} {best[1]:.4f} at epoch {best[2]}: {out_dir / 'checkpoints' / 'best.pt'}")
    say(f"results: {out_dir / 'results.csv'}, log: {out_dir / 'train.log'}")


@hookimpl
def tdfusion_register_commands(cli: Any) -> None:
    cli.add_command(train_command)
