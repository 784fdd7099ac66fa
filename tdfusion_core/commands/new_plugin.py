"""``tdfusion new-plugin NAME``: write a ready-to-install task-plugin distribution from the template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tdfusion_core import hookimpl
from tdfusion_core.commands.options import folder_option


@click.command(name="new-plugin")
@click.argument("name")
@folder_option("--out", "out_dir", default=Path("."), help="Folder in which tdfusion-NAME/ is created.")
@click.option("--task-name", help="Name the task is registered under (default: NAME).")
@click.option("--force", is_flag=True, help="Overwrite the template's files in an existing folder.")
def new_plugin_command(name: str, out_dir: Path, task_name: str | None, force: bool) -> None:
    """Create tdfusion-NAME/: a task plugin with its entry point, a working Task skeleton, README and tests.

    NAME is lower case with hyphens (e.g. crowd-count); the package is tdfusion_NAME with underscores.
    """
    from tdfusion_core.apps.new_plugin import TemplateError, template_context, write_plugin

    try:
        dest = write_plugin(name, out_dir, task_name=task_name, overwrite=force)
        context = template_context(name, task_name)
    except TemplateError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(
        f"wrote {dest}/ (task {context['task_name']!r}, class {context['package']}.task.{context['class_name']})"
    )
    click.echo("next steps:")
    click.echo(f"  pip install -e {dest}[test]")
    click.echo(f"  tdfusion plugins          # lists {context['plugin_name']!r}")
    click.echo(f"  pytest {dest}")


@hookimpl
def tdfusion_register_commands(cli: Any) -> None:
    cli.add_command(new_plugin_command)
