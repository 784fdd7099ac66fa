"""What counts as a user error (shown as one line, no traceback) and checks that turn raw failures into such errors.

A user error is something the person running tdfusion can fix: a missing or unreadable file, a bad dataset or
checkpoint, a wrong option, a full disk, a diverged run. Bugs (anything else) keep their traceback. The command line
(:mod:`tdfusion_core.cli`) prints user errors as ``Error: <message>``; ``--debug`` / ``TDFUSION_DEBUG=1`` shows the
traceback of any error.
"""

from __future__ import annotations

import torch


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a user error (see the module docstring)."""
    from tdfusion_core.hookspecs import PluginNotReadyError
    from tdfusion_core.run_files import RunLockedError
    from tdfusion_core.state_guard import NonFiniteStateError

    if isinstance(exc, (OSError, ValueError, LookupError, NonFiniteStateError, RunLockedError, PluginNotReadyError)):
        return True
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return type(exc).__name__ in ("TrainingDivergedError", "DeviceError")


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


class DeviceError(ValueError):
    """A ``--device`` this machine does not have."""


def available_devices() -> list[str]:
    """The devices of this machine: ``cpu``, each ``cuda:N``, and ``mps`` when present."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def check_device(device: str | torch.device, option: str = "--device") -> torch.device:
    """``torch.device(device)`` if this machine has it, else :class:`DeviceError` listing what it has.

    ``"auto"`` is returned as the best device available (CUDA, then MPS, then the CPU).
    """
    if str(device) == "auto":
        found = available_devices()
        return torch.device("cuda:0" if "cuda:0" in found else "mps" if "mps" in found else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(
            f"{option} {device!r} is not a device name; this machine has: {', '.join(available_devices())}"
        ) from exc
    found = available_devices()
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{option} {device}: this machine has no usable CUDA GPU; it has: {', '.join(found)}")
        if (dev.index or 0) >= torch.cuda.device_count():
            raise DeviceError(f"{option} {device}: no such GPU; this machine has: {', '.join(found)}")
    elif dev.type == "mps" and "mps" not in found:
        raise DeviceError(f"{option} {device}: MPS is not available here; this machine has: {', '.join(found)}")
    elif dev.type not in ("cpu", "cuda", "mps", "meta"):
        raise DeviceError(f"{option} {device}: not supported here; this machine has: {', '.join(found)}")
    return dev
