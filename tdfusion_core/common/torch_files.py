"""Reading ``.pt`` files safely: ``torch.load(weights_only=True)`` with one-line errors for every kind of bad file.

Why a module of its own: checkpoints, training states and task checkpoints (:meth:`tdfusion_core.kernel.task.Task.load_checkpoint`)
are all read through it, and the Task contract sits below the checkpoint format in the package's layers.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, is of an unknown kind, or does not fit the architecture it names."""


def unsafe_pickle_message(path: str | Path, detail: str) -> str:
    """Why a file that needs code execution to load is refused, and how to convert a file one trusts.

    Never suggests ``weights_only=False``: for a file of unknown origin that is exactly how the payload would run.
    """
    return (
        f"{path} is refused: it holds Python objects ({detail}) that only load by executing code from the file, "
        "and tdfusion never does that (torch.load(weights_only=True)). If it comes from an unknown source, do not "
        "use it. If you made it yourself, re-save only the tensors where it was made "
        "(torch.save(model.state_dict(), 'weights.pt')); for a file you trust whose classes you know, allow exactly "
        "those classes while converting it once: with torch.serialization.safe_globals([TheClass]): "
        "sd = torch.load(path); then torch.save(sd, 'weights.pt')"
    )


def read_torch_file(path: str | Path, map_location: Any = "cpu", what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` with one-line :class:`CheckpointError` messages for bad files.

    Distinguishes a missing file (:class:`FileNotFoundError`), an empty one (a write that never happened), a
    truncated or corrupted one, a file that is not a PyTorch checkpoint at all, and one holding objects that need
    code execution to load (refused, with how to convert a trusted file, see :func:`unsafe_pickle_message`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the write of this {what} never completed")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic == b"PK\x03\x04":  # torch.save's zip container: a truncated one has no central directory
        try:
            with zipfile.ZipFile(path):
                pass
        except (zipfile.BadZipFile, OSError) as exc:
            raise CheckpointError(
                f"{path} is truncated or corrupted ({size} bytes, an incomplete archive): an interrupted write or "
                "copy; use an intact copy"
            ) from exc
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        blocked = [line.strip() for line in text.splitlines() if "GLOBAL" in line or "Unsupported global" in line]
        if blocked:
            named = re.search(r"GLOBAL ([\w.]+)", blocked[0])
            detail = named.group(1) if named else blocked[0]
            raise CheckpointError(unsafe_pickle_message(path, detail)) from exc
        raise CheckpointError(
            f"{path} is not a readable PyTorch {what}: its {size} bytes are another format or a plain pickle, "
            "not a file written by torch.save"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile) as exc:
        text = _first_line(str(exc)) or type(exc).__name__
        if "zip archive" in text or "central directory" in text or isinstance(exc, EOFError):
            raise CheckpointError(
                f"{path} is truncated or corrupted ({size} bytes; {text.split('. ')[0]}): an interrupted write or "
                "copy; use an intact copy"
            ) from exc
        raise CheckpointError(f"{path} is not a readable PyTorch {what}: {type(exc).__name__}: {text}") from exc
    except (KeyError, OSError, ValueError, UnicodeDecodeError, AttributeError, IndexError) as exc:
        raise CheckpointError(
            f"{path} is not a readable PyTorch {what}: torch.load cannot parse its {size} bytes ({type(exc).__name__})"
        ) from exc


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), text)
