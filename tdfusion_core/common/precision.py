"""One precision policy: the names ``fp32``, ``bf16``, ``fp16`` and what each means for a forward pass.

Every command and app that offers a compute type takes ``--precision fp32|bf16|fp16`` (``tdfusion fuse``,
``tdfusion bench fuse``; training's ``amp: true`` is ``bf16``). ``fp32`` is exact; ``bf16`` and ``fp16`` run the
forward passes under :func:`torch.autocast` in that type (ReFusion's fast inference pass instead holds weights and
activations in it) and report their difference to ``fp32`` where an app can measure it. ``fp16`` is closer to
``fp32`` (10-bit mantissa against bfloat16's 7) but slow on most CPUs; ``bf16`` is fast on GPUs and on CPUs with
native bfloat16.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # torch is imported when a dtype is asked for, so that command-line help stays fast
    import torch

Precision = Literal["fp32", "bf16", "fp16"]
#: the names, and the torch dtype each computes in
PRECISION_NAMES: tuple[str, ...] = ("fp32", "bf16", "fp16")
_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
#: the options that ``--precision`` replaced, and the message that names the replacement
REPLACED_OPTIONS = {
    "--amp": "--amp was replaced by --precision bf16 (or fp16)",
    "--amp-dtype": "--amp-dtype was replaced by --precision: bfloat16 is --precision bf16, float16 --precision fp16",
}


def precision_dtype(name: str) -> torch.dtype:
    """The dtype of precision ``name``; an unknown name fails in one line naming the choices."""
    import torch

    if name not in _DTYPE_NAMES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_NAMES)}, not {name!r}")
    dtype: torch.dtype = getattr(torch, _DTYPE_NAMES[name])
    return dtype


def autocast_dtype(name: str) -> torch.dtype | None:
    """The autocast dtype of precision ``name``; ``None`` for ``fp32`` (no autocast)."""
    dtype = precision_dtype(name)
    return None if name == "fp32" else dtype


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` on ``device``'s type in ``dtype``, or a no-op for ``None`` (float32)."""
    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def training_precision(amp: bool) -> Precision:
    """Training's precision: ``amp`` (``TrainConfig.amp``) is ``bf16`` autocast, else ``fp32``."""
    return "bf16" if amp else "fp32"
