"""Fake installed plugins for the fault tests: a folder on ``sys.path`` with a ``*.dist-info`` declaring entry points.

``importlib.metadata`` finds such a folder like any installed distribution, in this process (after
``sys.path`` changes) and in subprocesses (through ``PYTHONPATH``), without touching the shared virtual env.
"""

from __future__ import annotations

import textwrap
from pathlib import Path


def install_fake_plugins(root: Path, plugins: dict[str, str], dist: str = "tdfusion-faultplugins") -> Path:
    """Write modules ``{entry-point name: source}`` (module ``fault_<name>``) and their dist-info under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{dist.replace('-', '_')}-0.0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
    lines = ["[tdfusion]"]
    for name, source in plugins.items():
        (root / f"fault_{name}.py").write_text(textwrap.dedent(source))
        lines.append(f"{name} = fault_{name}")
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return root


EXITING = """
import sys
sys.exit(3)
"""

RAISING_REGISTER = """
from tdfusion_core import hookimpl

@hookimpl
def tdfusion_register_tasks():
    raise RuntimeError("register hook broken on purpose")
"""

EXITING_EVENT = """
import sys
from tdfusion_core import hookimpl

@hookimpl
def tdfusion_on_epoch_end(trainer, epoch, metrics):
    sys.exit("event hook exits on purpose")
"""

BAD_COMMANDS = """
from tdfusion_core import hookimpl

@hookimpl
def tdfusion_register_commands(cli):
    raise ValueError("command hook broken on purpose")
"""
