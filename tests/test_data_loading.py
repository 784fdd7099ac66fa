"""Reading dataset items in worker processes: the same items in the same order as in the training process, and
the same errors."""

from __future__ import annotations

import os

import pytest
import torch

from tdfusion_core.data.labels import DataError
from tdfusion_core.data.loading import read_groups
from tdfusion_core.data.paired import PairedDataset
from tests.data_helpers import make_folder, one_torch_thread  # noqa: F401


class Pids(torch.utils.data.Dataset):
    """Item ``i`` is ``(i, the pid of the process that read it)``."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> tuple[int, int]:
        return i, os.getpid()


class Unpicklable(Exception):
    def __init__(self, a: int, b: int) -> None:  # pickle would call Unpicklable(message) and fail
        super().__init__(f"bad item {a}/{b}")


class Failing(Pids):
    def __getitem__(self, i: int) -> tuple[int, int]:
        if i == 4:
            raise Unpicklable(i, 6)
        return super().__getitem__(i)


def test_workers_read_the_groups_in_order_in_other_processes():
    groups = [[3, 1], [0], [5, 2, 4], []]
    here = list(read_groups(Pids(), groups, num_workers=0))
    there = list(read_groups(Pids(), groups, num_workers=2))
    assert [[i for i, _ in g] for g in here] == [[i for i, _ in g] for g in there] == [[3, 1], [0], [5, 2, 4], []]
    assert {pid for g in here for _, pid in g} == {os.getpid()}
    assert os.getpid() not in {pid for g in there for _, pid in g}


def _scaled(items: list[tuple[int, int]], factor: int) -> tuple[list[int], int]:
    return [i * factor for i, _ in items], os.getpid()


def test_prepare_runs_where_the_items_are_read():
    groups, work = [[1, 2], [5]], [10, 100]
    here = list(read_groups(Pids(), groups, 0, _scaled, work))
    there = list(read_groups(Pids(), groups, 2, _scaled, work))
    assert [v for v, _ in here] == [v for v, _ in there] == [[10, 20], [500]]
    assert {pid for _, pid in here} == {os.getpid()} and os.getpid() not in {pid for _, pid in there}
    with pytest.raises(ValueError, match="1 work items for 2 groups"):
        list(read_groups(Pids(), groups, 0, _scaled, [10]))


def test_real_images_read_by_workers_are_bit_identical(tmp_path):
    data = PairedDataset(make_folder(tmp_path, names=("a", "b", "c", "d"), mask_classes=3))
    groups = [[2, 0], [3], [1, 2]]
    state = torch.get_rng_state()
    for here, there in zip(read_groups(data, groups, 0), read_groups(data, groups, 2), strict=True):
        for a, b in zip(here, there, strict=True):
            assert a.name == b.name
            assert torch.equal(a.sources, b.sources) and torch.equal(a.chroma, b.chroma)
            assert torch.equal(a.target, b.target)
    assert torch.equal(torch.get_rng_state(), state)  # the loader's seeds are not drawn from torch's generator


def test_a_worker_error_is_raised_again_naming_the_file(tmp_path):
    root = make_folder(tmp_path, names=("a", "b", "c"))
    data = PairedDataset(root)
    (root / "train" / "vi" / "b.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"vi/b\.png") as info:
        list(read_groups(data, [[0], [1], [2]], num_workers=2))
    assert [p.kind for p in info.value.problems] == ["unreadable"]  # the exception itself, rebuilt


def test_an_exception_that_cannot_travel_comes_back_as_its_message():
    with pytest.raises(RuntimeError, match=r"Unpicklable: bad item 4/6"):
        list(read_groups(Failing(), [[0, 1], [4]], num_workers=2))
    with pytest.raises(Unpicklable):  # in the training process it is raised as it is
        list(read_groups(Failing(), [[4]], num_workers=0))


def test_negative_workers_are_refused():
    with pytest.raises(ValueError, match="num_workers must be 0 or more"):
        list(read_groups(Pids(), [[0]], num_workers=-1))
