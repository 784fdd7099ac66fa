"""The ``tdfusion`` command line: a click group whose subcommands come from plugins (built-ins included).

User errors (a missing file, a bad checkpoint or dataset, a full disk, a diverged run ...) end as one line,
``Error: <message>``, with exit status 1 and no traceback; ``--debug`` (before the command) or ``TDFUSION_DEBUG=1``
shows the traceback as well. ``tdfusion --version`` answers without importing any plugin.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings

import click

from tdfusion_core import __version__

DEBUG_ENV = "TDFUSION_DEBUG"


def _set_debug(_ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        os.environ[DEBUG_ENV] = "1"


def build_cli() -> click.Group:
    """Build the root command and let every plugin add its subcommands (a failing plugin is warned about)."""

    @click.group(context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, prog_name="tdfusion")
    @click.option(
        "--debug",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_set_debug,
        help=f"Show the full traceback of an error (also {DEBUG_ENV}=1).",
    )
    def cli() -> None:
        """Task-driven image fusion with a learnable fusion loss (TDFusion)."""

    from tdfusion_core.plugin.manager import get_plugin_manager

    pm = get_plugin_manager()
    for impl in reversed(pm.hook.tdfusion_register_commands.get_hookimpls()):
        try:
            impl.function(cli=cli)
        except Exception as exc:
            warnings.warn(
                f"plugin {pm.get_name(impl.plugin)!r} failed to add its commands: {type(exc).__name__}: {exc}",
                stacklevel=1,
            )
    return cli


def _debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    args = list(argv if argv is not None else sys.argv[1:])
    if args == ["--version"]:  # no plugin import: answers even when an installed plugin hangs
        click.echo(f"tdfusion, version {__version__}")
        return
    if "--debug" in args[: next((i for i, a in enumerate(args) if not a.startswith("-")), len(args))]:
        os.environ[DEBUG_ENV] = "1"
    try:
        build_cli().main(args=args, prog_name="tdfusion", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        if _debugging() and exc.__cause__ is not None:
            traceback.print_exception(exc.__cause__)
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as exc:
        from tdfusion_core.commands.user_errors import is_user_error, one_line

        if _debugging() or not is_user_error(exc):
            raise
        click.echo(f"Error: {one_line(exc)} (--debug shows the traceback)", err=True)
        sys.exit(1)
