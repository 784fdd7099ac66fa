"""``tdfusion plugins``: list loaded plugins as JSON."""

from __future__ import annotations

import json
from typing import Any

import click

from tdfusion_core import hookimpl


@click.command(name="plugins")
def plugins_command() -> None:
    """List plugins as JSON: name, version, hooks, registered names, and the error of any that failed to load."""
    from tdfusion_core.plugins import describe_plugins

    click.echo(json.dumps(describe_plugins(), indent=2))


@hookimpl
def tdfusion_register_commands(cli: Any) -> None:
    cli.add_command(plugins_command)
