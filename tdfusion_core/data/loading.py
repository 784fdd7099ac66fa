"""Reading dataset items, in the training process or in ``num_workers`` worker processes.

Training reads its samples here and nowhere else (:mod:`tdfusion_core.training.batches` builds its batches from them). On
real image folders reading is decoding, and decoding dominates the data time (a 640x512 LLVIP pair: about 35 ms of
CPU to read, 6 ms to crop, resize and stack; docs/datasets.md), so ``num_workers > 0`` moves the reads to worker
processes that run ahead of the training steps. The workers read the samples and do the image work that needs no
task (the crop for the fusion loss, the resize to the task size: :func:`tdfusion_core.training.batches.sample_images`).
Which indices, in which order, and every random draw are decided in the training process beforehand
(:mod:`tdfusion_core.data.sampling`), the task's target operations stay in the training process, and the items come
back in order, so a run gives the same batches bit for bit whatever ``num_workers`` is.

A dataset read in workers must be picklable when the start method is not ``fork`` (macOS, Windows; ``forkserver``
is the default from Python 3.14) and should not draw random numbers (each worker has its own generator). An error
raised in a worker is raised again in the training process, as the same exception.
"""

from __future__ import annotations

import pickle
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

#: work done on a group's items where they are read: ``prepare(items, work)``
Prepare = Callable[[list[Any], Any], Any]


class _Failure:
    """An exception raised while reading, carried back from a worker process."""

    def __init__(self, exc: BaseException) -> None:
        self.worker_traceback = traceback.format_exc()
        try:  # an exception that does not survive pickling is carried as its message
            carried = pickle.loads(pickle.dumps(exc))
            same = type(carried) is type(exc) and str(carried) == str(exc)
        except Exception:
            same = False
        self.exc: BaseException = exc if same else RuntimeError(f"{type(exc).__name__}: {exc}")


def _read(dataset: Any, group: Sequence[int], prepare: Prepare | None, work: Any) -> Any:
    items = [dataset[int(i)] for i in group]
    return prepare(items, work) if prepare is not None else items


class _Groups(Dataset[Any]):
    """Item ``k``: :func:`_read` of ``groups[k]``, or the :class:`_Failure` of it."""

    def __init__(
        self, dataset: Any, groups: Sequence[Sequence[int]], prepare: Prepare | None, work: Sequence[Any]
    ) -> None:
        self.dataset, self.groups, self.prepare, self.work = dataset, groups, prepare, work

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, k: int) -> Any:
        try:
            return _read(self.dataset, self.groups[k], self.prepare, self.work[k])
        except Exception as exc:
            return _Failure(exc)


def _as_is(item: Any) -> Any:
    return item


def read_groups(
    dataset: Any,
    groups: Sequence[Sequence[int]],
    num_workers: int = 0,
    prepare: Prepare | None = None,
    work: Sequence[Any] | None = None,
) -> Iterator[Any]:
    """``[dataset[i] for i in group]`` for each group of ``groups``, in order; with ``prepare``,
    ``prepare(those items, work[k])`` for group ``k`` instead, computed where the items are read.

    ``num_workers = 0`` reads in this process when each group is asked for; otherwise ``num_workers`` processes
    read ahead (two groups each) while the caller works on the previous ones. ``prepare`` must then be a
    module-level function and ``work`` picklable (they go to the workers when processes are not forked).
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
    work = list(work) if work is not None else [None] * len(groups)
    if len(work) != len(groups):
        raise ValueError(f"{len(work)} work items for {len(groups)} groups")
    if num_workers == 0:
        for group, job in zip(groups, work):
            yield _read(dataset, group, prepare, job)
        return
    loader = DataLoader(
        _Groups(dataset, groups, prepare, work),
        batch_size=None,  # one item is one group
        shuffle=False,
        num_workers=min(num_workers, max(len(groups), 1)),
        collate_fn=_as_is,
        generator=torch.Generator(),  # the loader's worker seeds, not a draw from torch's global generator
    )
    for item in loader:
        if isinstance(item, _Failure):
            if hasattr(item.exc, "add_note"):  # Python 3.11+
                item.exc.add_note(f"(raised in a data-loading worker process)\n{item.worker_traceback}")
            raise item.exc
        yield item
