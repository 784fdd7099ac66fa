"""``tdfusion plugins``: list loaded plugins as JSON, with whether each can work here (``ready``) and the fix if not."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from tdfusion_core import hookimpl


def readiness_problems() -> dict[str, str]:
    """Plugin name -> one-line problem, for every plugin whose ``tdfusion_plugin_ready`` hook reports one.

    Each implementation is called on its own, so one plugin's failing check is reported against that plugin only.
    """
    from tdfusion_core.plugin.manager import get_plugin_manager

    pm = get_plugin_manager()
    problems: dict[str, str] = {}
    for impl in pm.hook.tdfusion_plugin_ready.get_hookimpls():
        name = pm.get_name(impl.plugin) or repr(impl.plugin)
        try:
            problem = impl.function()
        except Exception as exc:  # a broken check must not hide the other plugins
            problem = f"its readiness check failed: {type(exc).__name__}: {exc}"
        if problem:
            problems[name] = str(problem)
    return problems


def plugin_report() -> list[dict[str, Any]]:
    """:func:`tdfusion_core.plugin.manager.describe_plugins` rows plus ``ready`` (bool) and ``problem`` (the fix, or None).

    A plugin is not ready when it failed to load (``problem`` is its load error) or when its
    ``tdfusion_plugin_ready`` hook names a missing runtime dependency.
    """
    from tdfusion_core.plugin.manager import describe_plugins

    rows = describe_plugins()
    problems = readiness_problems()
    for row in rows:
        problem = row.get("error") or problems.get(str(row["name"]))
        row["ready"] = problem is None
        row["problem"] = problem
    return rows


@click.command(name="plugins")
@click.option(
    "--check",
    is_flag=True,
    help="Print one line per plugin (ready, or what is missing and the install line); exit 1 if any is not ready.",
)
def plugins_command(check: bool) -> None:
    """List plugins as JSON: name, version, hooks, registered names, ready / problem (with the fix), load error."""
    rows = plugin_report()
    if not check:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        status = "ready" if row["ready"] else f"NOT READY: {row['problem']}"
        version = f" {row['version']}" if row["version"] else ""
        click.echo(f"{row['name']}{version}: {status}")
    if not all(row["ready"] for row in rows):
        sys.exit(1)


@hookimpl
def tdfusion_register_commands(cli: Any) -> None:
    cli.add_command(plugins_command)
