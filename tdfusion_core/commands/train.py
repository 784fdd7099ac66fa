"""``tdfusion train``: meta-train a fusion network with a task-driven learnable loss (Algorithm 1)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from tdfusion_core import hookimpl


def _parse_overrides(pairs: tuple[str, ...]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--set")
        key, value = pair.split("=", 1)
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


@click.command(name="train")
@click.option("--task", help="Registered task name (see `tdfusion plugins`). Default: from --config, else tiny-seg.")
@click.option("--data", help="Dataset folder or registered dataset name (synthetic, llvip, msrs, ...).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="YAML settings.")
@click.option("--device", help="torch device, e.g. cpu, cuda, cuda:1.")
@click.option("--amp/--no-amp", default=None, help="bfloat16 autocast for forward passes.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs/train"),
    show_default=True,
    help="Run directory: config, checkpoints, logs, images, model.pt.",
)
@click.option("--resume", is_flag=True, help="Continue from <out>/checkpoints/last.pt.")
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
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any other setting of the config (YAML value), e.g. --set crop_size=128 --set fixed_weights=true.",
)
def train_command(
    task: str | None,
    data: str | None,
    config_path: Path | None,
    device: str | None,
    amp: bool | None,
    out_dir: Path,
    resume: bool,
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
    from tdfusion_core.config import TrainConfig
    from tdfusion_core.trainer import MetaTrainer, TrainingDivergedError
    from tdfusion_core.trust import refuse_trust_from_file, with_trust, without_trust

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    values: dict[str, Any] = {}
    saved = out_dir / "config.yaml"
    if resume and saved.is_file():
        values.update(without_trust(TrainConfig.from_yaml(saved).to_dict()))
    elif resume:  # config.yaml lost: the settings stored in the checkpoint itself
        from tdfusion_core.run_files import load_training_state

        try:
            state, _ = load_training_state(out_dir / "checkpoints" / "last.pt")
        except (OSError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
        values.update(without_trust(dict(state.get("config") or {})))
    if config_path is not None:
        from_file = TrainConfig.from_yaml(config_path).to_dict()
        try:
            refuse_trust_from_file(from_file, str(config_path))
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
        values.update(from_file)
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
    values.update({k: v for k, v in given.items() if v is not None})
    values.update(_parse_overrides(overrides))
    if trust_checkpoint:
        values = with_trust(values)
    try:
        config = TrainConfig.from_dict(values, source="the command line")
    except (TypeError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc
    if not resume and (out_dir / "checkpoints" / "last.pt").exists():
        raise click.UsageError(f"{out_dir} already holds a run; use --resume to continue it or another --out")
    try:
        trainer = MetaTrainer(config, out_dir=out_dir, resume=resume)
        say = click.echo if trainer.is_main_process else (lambda _message: None)  # once under torchrun
        say(
            f"training task {config.task!r} on {config.data!r} ({len(trainer.train_set)} samples, "
            f"{trainer.num_sources} sources) on {config.device}; run directory {out_dir}"
        )
        history = trainer.fit()
    except TrainingDivergedError as exc:
        raise click.ClickException(str(exc)) from exc
    except (FileNotFoundError, LookupError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    last = history[-1] if history else {}
    weights = ", ".join(f"{last[k]:.3f}" for k in sorted(last) if k.startswith("weight/"))
    say(f"done: {trainer.epoch} epochs; mean source weights [{weights}]; model: {out_dir / 'model.pt'}")


@hookimpl
def tdfusion_register_commands(cli: Any) -> None:
    cli.add_command(train_command)
