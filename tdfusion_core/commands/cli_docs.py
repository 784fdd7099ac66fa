"""The ``tdfusion`` command group as a module-level object, for the generated CLI reference (mkdocs-click).

:func:`tdfusion_core.commands.cli.build_cli` builds the group at run time from the plugins' ``tdfusion_register_commands``
hooks. mkdocs-click needs an importable attribute, so this module builds it once on import, with the built-in
plugins only (``TDFUSION_LOAD_PLUGINS`` set to empty while it is built): the reference documents tdfusion-core's own
commands whatever else is installed where the docs are built. Installed plugins add their commands to
``tdfusion --help`` at run time.
"""

from __future__ import annotations

import os

import click

from tdfusion_core.commands.cli import build_cli
from tdfusion_core.plugin.manager import ALLOW_LIST_ENV, reset_plugin_manager


def build_core_cli() -> click.Group:
    """The root group with the built-in commands only; the process's plugin manager is left as it was found."""
    saved = os.environ.get(ALLOW_LIST_ENV)
    os.environ[ALLOW_LIST_ENV] = ""
    reset_plugin_manager()
    try:
        return build_cli()
    finally:
        if saved is None:
            os.environ.pop(ALLOW_LIST_ENV, None)
        else:
            os.environ[ALLOW_LIST_ENV] = saved
        reset_plugin_manager()


#: the ``tdfusion`` command group (built-in commands), documented by ``::: mkdocs-click`` in docs/cli.md
cli: click.Group = build_core_cli()
