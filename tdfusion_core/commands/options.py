"""Options shared by several commands, so that each is written, parsed and reported one way."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from tdfusion_core.common.sizes import optional_size
from tdfusion_core.training.config_io import ConfigError, apply_override

#: what an option decorator does to a command function
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def folder_option(
    *decls: str, help: str | None = None, required: bool = False, default: Path | None = None, exists: bool = False
) -> Decorator:
    """A folder-path option (``--out``, ``--ir`` ...) read as a :class:`~pathlib.Path`; ``exists``: it must exist."""
    return click.option(
        *decls,
        type=click.Path(file_okay=False, exists=exists, path_type=Path),
        required=required,
        default=default,
        show_default=default is not None,
        help=help,
    )


def device_option(
    default: str | None = "auto", help: str | None = "auto (CUDA, then MPS, else CPU), cpu, cuda ..."
) -> Decorator:
    """``--device``: a device name for :func:`tdfusion_core.common.devices.pick_device` (``auto`` picks one)."""
    return click.option("--device", default=default, show_default=default is not None, help=help)


def batch_size_option(default: int, help: str | None = None) -> Decorator:
    """``--batch-size``: a positive count."""
    return click.option("--batch-size", type=click.IntRange(min=1), default=default, show_default=True, help=help)


def threads_option(help: str = "CPU threads for torch (default: torch's).") -> Decorator:
    """``--threads``: torch's CPU threads for the run (``None``: torch's own choice)."""
    return click.option("--threads", type=click.IntRange(min=1), default=None, help=help)


def key_value_option(*decls: str, help: str) -> Decorator:
    """A repeatable ``KEY=VALUE`` option (read with :func:`key_value_options`)."""
    return click.option(*decls, multiple=True, metavar="KEY=VALUE", help=help)


def json_option(help: str = "Print one JSON object.") -> Decorator:
    """``--json`` (parameter ``as_json``): print the result as JSON instead of text."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def default_allocator_option() -> Decorator:
    """``--default-allocator``: opt out of :func:`tdfusion_core.common.speed.keep_freed_memory` (the benchmarks' default)."""
    return click.option(
        "--default-allocator",
        is_flag=True,
        help="Leave glibc malloc as it is (default: keep freed memory, as tdfusion fuse does; see tdfusion_core.common.speed).",
    )


def size_callback(minimum: int = 1) -> Callable[[click.Context, click.Parameter, Any], tuple[int, int] | None]:
    """Click callback parsing an ``HxW`` option with :func:`tdfusion_core.common.sizes.parse_size` (``None`` if unset)."""

    def callback(_ctx: click.Context, param: click.Parameter, value: Any) -> tuple[int, int] | None:
        try:
            return optional_size(value, what=f"--{(param.name or 'size').replace('_', '-')}", minimum=minimum)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return callback


def key_value_options(pairs: tuple[str, ...] | list[str], hint: str, *, dotted: bool = True) -> dict[str, Any]:
    """Repeatable ``KEY=VALUE`` options as a dict: the one reading of ``--set``, ``--task-option``, ``--data-option``.

    With ``dotted`` (the default) each value is read as YAML 1.2 (``1e-4`` is a number, ``[1, 2]`` a list) and
    ``KEY.SUB=VALUE`` sets one entry of a mapping, as ``tdfusion train --set`` does
    (:func:`tdfusion_core.training.config_io.apply_override`); without it, keys are taken whole and values kept as text
    (``--fused NAME=FOLDER``). A malformed pair is a usage error naming the option.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        try:
            if dotted:
                apply_override(out, pair, source=hint)
                continue
            key, sep, text = pair.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"{hint}: expected KEY=VALUE, got {pair!r}")
            out[key.strip()] = text
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint=hint) from None
    return out


def precision_options(help_text: str, default: str | None = "fp32") -> Callable[[Any], Any]:
    """``--precision fp32|bf16|fp16`` (:mod:`tdfusion_core.common.precision`), with the options it replaced (``--amp``,
    ``--amp-dtype``) kept hidden so that using one stops with a one-line error naming ``--precision``."""
    from tdfusion_core.common.precision import PRECISION_NAMES, REPLACED_OPTIONS

    def replaced(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value:
            raise click.UsageError(REPLACED_OPTIONS[param.opts[0]], ctx=ctx)

    def decorate(command: Any) -> Any:
        command = click.option("--amp-dtype", hidden=True, expose_value=False, callback=replaced)(command)
        command = click.option("--amp", is_flag=True, hidden=True, expose_value=False, callback=replaced)(command)
        choice = click.Choice(list(PRECISION_NAMES))
        return click.option("--precision", type=choice, default=default, show_default=True, help=help_text)(command)

    return decorate
