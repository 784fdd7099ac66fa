"""The ``tdfusion`` command line: a click group whose subcommands come from plugins (built-ins included)."""

from __future__ import annotations

import sys
import warnings

import click

from tdfusion_core import __version__


def build_cli() -> click.Group:
    """Build the root command and let every plugin add its subcommands (a failing plugin is warned about)."""

    @click.group(context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, prog_name="tdfusion")
    def cli() -> None:
        """Task-driven image fusion with a learnable fusion loss (TDFusion)."""

    from tdfusion_core.plugins import get_plugin_manager

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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point. A :class:`~tdfusion_core.hookspecs.PluginNotReadyError` from any command (a
    plugin's missing dependency) is printed as one line saying the fix, without a traceback (exit status 1)."""
    from tdfusion_core.hookspecs import PluginNotReadyError

    try:
        build_cli().main(args=argv if argv is not None else sys.argv[1:], prog_name="tdfusion")
    except PluginNotReadyError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
