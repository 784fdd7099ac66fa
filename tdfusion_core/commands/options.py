"""Options shared by several commands, so that each is written, parsed and reported one way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from tdfusion_core.sizes import optional_size


def size_callback(minimum: int = 1) -> Callable[[click.Context, click.Parameter, Any], tuple[int, int] | None]:
    """Click callback parsing an ``HxW`` option with :func:`tdfusion_core.sizes.parse_size` (``None`` if unset)."""

    def callback(_ctx: click.Context, param: click.Parameter, value: Any) -> tuple[int, int] | None:
        try:
            return optional_size(value, what=f"--{(param.name or 'size').replace('_', '-')}", minimum=minimum)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return callback
