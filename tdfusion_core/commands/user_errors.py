"""What counts as a user error (shown as one line, no traceback) and checks that turn raw failures into such errors.

A user error is something the person running tdfusion can fix: a missing or unreadable file, a bad dataset or
checkpoint, a wrong option, a full disk, a diverged run. Bugs (anything else) keep their traceback. The command line
(:mod:`tdfusion_core.commands.cli`) prints user errors as ``Error: <message>``; ``--debug`` / ``TDFUSION_DEBUG=1`` shows the
traceback of any error.
"""

from __future__ import annotations

import torch


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a user error (see the module docstring)."""
    from tdfusion_core.plugin.hookspecs import PluginNotReadyError
    from tdfusion_core.training.run_files import RunLockedError
    from tdfusion_core.training.state_guard import NonFiniteStateError

    if isinstance(exc, (OSError, ValueError, LookupError, NonFiniteStateError, RunLockedError, PluginNotReadyError)):
        return True
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return type(exc).__name__ == "TrainingDivergedError"


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` for the console (its type name when it has none; out-of-memory gets a hint)."""
    if isinstance(exc, torch.OutOfMemoryError):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"out of memory ({first}); use a smaller batch or image tile size, or another device"
    if isinstance(exc, OSError) and exc.filename and exc.strerror and str(exc.filename) not in str(exc.strerror):
        return f"{exc.strerror}: {exc.filename}"
    # str(KeyError("x")) is "'x'": use the bare message; other messages keep their quotes
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return text.strip() or type(exc).__name__
