"""Choosing the device: ``auto`` is CUDA when a GPU is usable, then Apple's MPS, else the CPU.

Every command's ``--device`` and :attr:`TrainConfig.device` default to ``auto``; any torch device string
(``cpu``, ``cuda``, ``cuda:1``, ``mps``) is accepted, and one this machine does not have is refused in one line
that lists what it has.
"""

from __future__ import annotations

import torch

AUTO = "auto"


class DeviceError(ValueError):
    """A device name that is malformed or that this machine does not have (a user error: one line)."""


def available_devices() -> list[str]:
    """Device names usable on this machine, best first (``cuda:0`` …, ``mps``, ``cpu``)."""
    found = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return [*found, "cpu"]


def pick_device(device: str | torch.device | None = AUTO, option: str = "device") -> torch.device:
    """``device`` as a :class:`torch.device`; ``auto`` (or ``None``) picks the best available one.

    Raises :class:`DeviceError` for a device that is malformed or absent on this machine (listing those present);
    ``option`` names the setting in that message (``--device``, ``device``).
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == AUTO):
        return torch.device(available_devices()[0])
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(
            f"{option} {device!r} is not a torch device ({exc}); use auto, cpu, cuda, cuda:N or mps"
        ) from None
    here = available_devices()
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index is not None and dev.index >= count):
            raise DeviceError(f"{option} {str(dev)!r} is not available on this machine (it has: {', '.join(here)})")
    if dev.type == "mps" and "mps" not in here:
        raise DeviceError(f"{option} 'mps' is not available on this machine (it has: {', '.join(here)})")
    if dev.type not in ("cpu", "cuda", "mps", "meta"):
        raise DeviceError(f"{option} {str(dev)!r} is not supported here (this machine has: {', '.join(here)})")
    return dev
