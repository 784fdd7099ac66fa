"""The files of a training run that must survive crashes and mistakes: checkpoints, the fallback, the run lock.

* :func:`save_training_state` writes ``checkpoints/last.pt`` through :func:`tdfusion_core.common.atomic.atomic_save`
  (fsync of file and folder) and keeps the one it replaces as ``last.prev.pt``.
* :func:`load_training_state` reads ``last.pt``; when it is unreadable (empty, truncated, foreign) it says so and
  falls back to ``last.prev.pt``; when neither can be read the error names both files and why.
* :func:`check_resume_config` refuses to resume with settings that change what the checkpoint holds (the networks'
  architectures, the task, the number of classes): the differing keys are listed.
* :class:`RunLock` is an exclusive lock on ``<out>/.tdfusion.lock`` held while a run writes there, so that a second
  run into the same ``--out`` is refused instead of mixing its files in. The operating system drops the lock when
  the process dies (even by ``kill -9``), so a stale lock never blocks a resume.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from tdfusion_core.common.atomic import atomic_save, previous_path, remove_stale_temps
from tdfusion_core.training.checkpoints import CheckpointError, plain_containers, read_torch_file

log = logging.getLogger(__name__)

LOCK_NAME = ".tdfusion.lock"

#: settings that decide the shapes of what a training checkpoint holds; a resume cannot change them
ARCHITECTURE_KEYS = (
    "task",
    "task_options",
    "tasks",
    "fusion_net",
    "fusion_options",
    "loss_generator",
    "loss_generator_options",
    "discriminative",
    "fixed_weights",
    "generator_update",
)


class RunLockedError(RuntimeError):
    """Another live process is writing the same run directory."""


class ResumeError(ValueError):
    """A run cannot be resumed: no readable checkpoint, or settings that do not fit it."""


def save_training_state(state: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically and durably, keeping the replaced file as ``<stem>.prev<suffix>``."""
    return atomic_save(dict(state), path, keep_previous=True)


def load_training_state(path: str | Path, map_location: Any = "cpu") -> tuple[dict[str, Any], Path]:
    """The training state in ``path``, else in its ``.prev`` fallback (with a warning); and the file it came from.

    Raises:
        FileNotFoundError: neither file exists.
        ResumeError: neither can be read (the message names both and why).
    """
    path = Path(path)
    fallback = previous_path(path)
    errors: list[str] = []
    for candidate in (path, fallback):
        if not candidate.is_file():
            errors.append(f"{candidate}: not found")
            continue
        try:
            state = read_torch_file(candidate, map_location, what="training checkpoint")
        except CheckpointError as exc:
            errors.append(str(exc))
            continue
        if not isinstance(state, Mapping) or state.get("format") != "tdfusion-train-state":
            errors.append(f"{candidate} is not a tdfusion training checkpoint (no 'format': 'tdfusion-train-state')")
            continue
        if candidate != path:
            message = f"{path} cannot be read ({errors[0]}); resuming from the previous checkpoint {candidate}"
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            log.warning(message)
        return dict(state), candidate
    if not path.is_file() and not fallback.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    raise ResumeError("--resume: no readable checkpoint; " + "; ".join(errors))


def check_resume_config(saved: Mapping[str, Any], current: Mapping[str, Any], checkpoint: str | Path) -> None:
    """Refuse settings that change the architecture stored in ``checkpoint`` (the differing keys are listed)."""
    differing = [
        f"{key}: {saved.get(key)!r} in the run, {current.get(key)!r} now"
        for key in ARCHITECTURE_KEYS
        if key in saved and plain_containers(saved.get(key)) != plain_containers(current.get(key))
    ]
    if differing:
        raise ResumeError(
            f"--resume: the settings differ from those {checkpoint} was trained with in keys that change the "
            f"networks ({'; '.join(differing)}); drop these overrides to resume, or start a new run (--out)"
        )


class RunLock:
    """Exclusive lock of a run directory (``with RunLock(out): ...``); see the module docstring.

    Also removes temporary checkpoint files that a killed writer left behind (safe once the lock is held).
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_NAME
        self._fh: IO[str] | None = None

    def acquire(self) -> RunLock:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the run's lifetime
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks here; the run proceeds unlocked
            self._fh = fh
            return self
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise RunLockedError(
                f"{self.out_dir} is being written by another run ({holder}); wait for it to finish or use another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        self._fh = fh
        for stale in remove_stale_temps(self.out_dir / "checkpoints", "last.pt"):
            log.info("removed %s, left by an interrupted checkpoint write", stale)
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing drops the flock
            self._fh = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
