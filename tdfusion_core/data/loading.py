"""Reading dataset items, in the training process or in ``num_workers`` worker processes.

Training reads its samples here and nowhere else (:mod:`tdfusion_core.batches` builds its batches from them). On
real image folders reading is decoding, and decoding dominates the data time (a 640x512 LLVIP pair: about 35 ms of
CPU to read, 6 ms to crop, resize and stack; docs/datasets.md), so ``num_workers > 0`` moves the reads to worker
processes that run ahead of the training steps. The workers only call ``dataset[index]``: which indices, in which
order, and every random draw are decided in the training process beforehand (:mod:`tdfusion_core.sampling`), and
the items come back in that order, so a run gives the same batches bit for bit whatever ``num_workers`` is.

A dataset read in workers must be picklable when the start method is not ``fork`` (macOS, Windows; ``forkserver``
is the default from Python 3.14) and should not draw random numbers (each worker has its own generator). An error
raised in a worker is raised again in the training process, as the same exception.
"""

from __future__ import annotations

import pickle
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset


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


class _Groups(Dataset[Any]):
    """Item ``k``: the dataset items of ``groups[k]`` (a list), or the :class:`_Failure` of reading them."""

    def __init__(self, dataset: Any, groups: Sequence[Sequence[int]]) -> None:
        self.dataset = dataset
        self.groups = [tuple(int(i) for i in g) for g in groups]

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, k: int) -> Any:
        try:
            return [self.dataset[i] for i in self.groups[k]]
        except Exception as exc:
            return _Failure(exc)


def _as_is(item: Any) -> Any:
    return item


def read_groups(dataset: Any, groups: Sequence[Sequence[int]], num_workers: int = 0) -> Iterator[list[Any]]:
    """``[dataset[i] for i in group]`` for each group of ``groups``, in order.

    ``num_workers = 0`` reads in this process when each group is asked for; otherwise ``num_workers`` processes
    read ahead (two groups each) while the caller works on the previous ones.
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
    if num_workers == 0:
        for group in groups:
            yield [dataset[int(i)] for i in group]
        return
    loader = DataLoader(
        _Groups(dataset, groups),
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
