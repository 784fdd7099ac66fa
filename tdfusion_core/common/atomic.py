"""The one way tdfusion writes a file that must never be seen half-written: checkpoints, models, fused images.

:func:`atomic_write` writes to a temporary file beside the target (``.<name>.<random>.tmp``), flushes and fsyncs
it, renames it over the target (:func:`os.replace`, atomic on POSIX and Windows) and fsyncs the folder, so that
after a crash or power cut the target is either the old file or the complete new one, and the rename itself is on
disk. With ``keep_previous`` the old target is first kept as ``<stem>.prev<suffix>`` (a hard link, else a copy),
so a run still has a good checkpoint if the newest one turns out unreadable.

Failures are one-line :class:`OutputWriteError` messages that name the path and say that the previous file is
intact: a full disk (``no space left on <folder>``), a read-only file system, a folder without write permission.
:func:`remove_stale_temps` deletes temporary files left by a writer that was killed.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".tmp"


class OutputWriteError(OSError):
    """A file could not be written (full disk, read-only or forbidden folder); the previous file is intact."""


def previous_path(path: str | Path) -> Path:
    """``last.pt`` -> ``last.prev.pt``: where :func:`atomic_write` keeps the replaced file with ``keep_previous``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable (no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_all(fh: IO[bytes], data: bytes | memoryview) -> None:
    """Write ``data`` to ``fh`` (one place, so tests can simulate a full disk)."""
    fh.write(data)


def _explain(exc: OSError, path: Path, previous_kept: bool) -> OutputWriteError:
    intact = f"; the previous {path.name} is intact" if previous_kept else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputWriteError(exc.errno, f"no space left on {path.parent}: {path.name} not written{intact}")
    if exc.errno == errno.EROFS:
        return OutputWriteError(exc.errno, f"{path.parent} is on a read-only file system: {path.name} not written")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return OutputWriteError(exc.errno, f"no permission to write in {path.parent}: {path.name} not written")
    return OutputWriteError(exc.errno, f"cannot write {path}: {exc.strerror or exc}{intact}")


def atomic_write(
    path: str | Path,
    write: Callable[[IO[bytes]], None] | bytes | memoryview,
    *,
    keep_previous: bool = False,
    mode: int = 0o644,
    fsync: bool = True,
) -> Path:
    """Write ``path`` atomically and durably (see the module docstring); returns ``path``.

    Args:
        path: the target file; its folder is created if needed.
        write: the bytes to write, or a function writing them to the binary file handle it is given.
        keep_previous: first keep an existing ``path`` as :func:`previous_path` (replacing an older one).
        fsync: flush file and folder to the disk (durable across power loss); ``False`` keeps only the atomicity
            (no half-written file under ``path`` after a crash of the process), for many small outputs.
        mode: permission bits of the new file, less the process's umask (``0o644``: readable by others, as a
            plainly created file would be; :func:`tempfile.mkstemp` alone would leave ``0600``).

    Raises:
        OutputWriteError: the file could not be written; ``path`` still holds what it held before.
    """
    path = Path(path)
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise _explain(exc, path, existed) from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(write):
                write(fh)
            else:
                _write_all(fh, write)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, mode & ~umask)
        if keep_previous and existed:
            _keep_previous(path)
        os.replace(tmp, path)
        if fsync:
            fsync_dir(path.parent)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, OutputWriteError):
            raise _explain(exc, path, existed) from exc
        raise
    return path


def _keep_previous(path: Path) -> None:
    """Point ``previous_path(path)`` at the current ``path`` without a moment where either is missing or partial."""
    prev = previous_path(path)
    fd, staged_name = tempfile.mkstemp(prefix=f".{prev.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    staged = Path(staged_name)
    try:
        staged.unlink()
        try:
            os.link(path, staged)
        except OSError:  # no hard links on this file system
            shutil.copyfile(path, staged)
        os.replace(staged, prev)
    finally:
        staged.unlink(missing_ok=True)


def atomic_save(obj: Any, path: str | Path, *, keep_previous: bool = False) -> Path:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_write`.

    The object is serialised in memory first, so a full disk surfaces as an ``ENOSPC`` error of the write (a clear
    :class:`OutputWriteError`) rather than as torch's zip-writer error.
    """
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write(path, buffer.getbuffer(), keep_previous=keep_previous)


def remove_stale_temps(folder: str | Path, name: str) -> list[Path]:
    """Delete temporary files of :func:`atomic_write` (and of older tdfusion versions) for ``name`` in ``folder``.

    Only call this when no other process writes ``name`` there (the trainer holds its run lock). Returns what was
    removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for pattern in (f".{name}.*{TEMP_SUFFIX}", f".{name}.tmp-*", f".{Path(name).stem}.prev{Path(name).suffix}.*"):
        for stale in folder.glob(pattern):
            if stale.is_file():
                stale.unlink(missing_ok=True)
                removed.append(stale)
    return removed
