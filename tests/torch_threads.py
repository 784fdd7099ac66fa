"""Fixture running a test module's torch code on one thread.

On the shared 2-core development machines several test runs compete for the cores, and torch's intra-op thread
pool then spends most of its time waiting at barriers (a forward pass of a small network measured 5 s on 2 threads
and 10 ms on one). Import ``one_torch_thread`` into a test module to use it there.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
