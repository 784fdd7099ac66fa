"""Sampling: the seeds, and which samples and random crop draws every training step takes.

The one home of everything random about *which data* a run sees:

* :func:`seed_everything` seeds Python, NumPy and torch once (model initialisation);
* :func:`epoch_generator` is the generator of one phase of one epoch, a pure function of ``(seed, epoch, phase)``;
* :func:`meta_split` draws the epoch's disjoint meta-train / meta-test halves (Algorithm 1 line 3);
* :class:`StepSampler` plans every step of a phase: the dataset indices of its global batches and the crop draws
  of their samples (:class:`BatchPlan`);
* :class:`ShardedBatches` says which items of a global batch this process prepares under ``torchrun``.

Every plan is a pure function of the seed, the epoch, the dataset's length and the batch size, drawn in the training
process before any sample is read: it is the same in every process, after a resume, and whatever ``num_workers``
(the worker processes only read samples; :mod:`tdfusion_core.training.batches` builds the batches from the plans).
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Sequence

import attrs
import numpy as np
import torch

#: the two phases of an epoch, as :func:`epoch_generator` numbers them
META_PHASE, FUSION_PHASE = 1, 2


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; with ``deterministic`` also force deterministic torch kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def epoch_generator(seed: int, epoch: int, phase: int) -> torch.Generator:
    """The seeded generator of one phase of one epoch (crop draws, the fusion phase's permutation)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7919 + phase)


def mix_seed(*values: int) -> int:
    """A 63-bit seed mixed from integers (``numpy.random.SeedSequence``): for per-epoch streams."""
    return int(
        np.random.SeedSequence([int(v) & 0xFFFFFFFFFFFFFFFF for v in values]).generate_state(2, np.uint64)[0] >> 1
    )


def meta_split(
    n: int,
    epoch: int,
    seed: int = 0,
    meta_train_size: int | None = None,
    meta_test_size: int | None = None,
) -> tuple[list[int], list[int]]:
    """Disjoint meta-train and meta-test index lists of one epoch, drawn from ``(seed, epoch)``.

    Defaults split the ``n`` indices in halves (meta-train gets the odd one), as the released code which alternates
    the batches of one shuffled pass between meta-train and meta-test.
    """
    if n < 2:
        raise ValueError(f"a meta split needs at least 2 samples, got {n}")
    ntr = meta_train_size if meta_train_size is not None else math.ceil(n / 2)
    nts = meta_test_size if meta_test_size is not None else n - ntr
    if ntr < 1 or nts < 1 or ntr + nts > n:
        raise ValueError(f"meta-train size {ntr} and meta-test size {nts} must be >= 1 and together <= {n}")
    g = torch.Generator().manual_seed(mix_seed(seed, epoch, 0x3E7A))
    perm = torch.randperm(n, generator=g).tolist()
    return perm[:ntr], perm[ntr : ntr + nts]


def full_batches(order: Sequence[int], batch_size: int) -> list[list[int]]:
    """Consecutive batches of ``order``; the last one is completed from the start of ``order``, so every batch
    has ``batch_size`` samples (every process then gets an equal shard, whatever ``len(order)``)."""
    n = len(order)
    if n == 0:
        return []
    return [[int(order[(i + j) % n]) for j in range(batch_size)] for i in range(0, n, batch_size)]


def crop_draws(count: int, gen: torch.Generator) -> torch.Tensor:
    """Two random integers per sample of a global batch, from which each sample's crop window is derived."""
    return torch.randint(0, 2**31 - 1, (count, 2), generator=gen)


@attrs.define(frozen=True)
class ShardedBatches:
    """Which items of a global batch this process prepares.

    A global batch of ``batch_size`` samples expands to ``items_per_step`` items: the samples in order, then (with
    the Switch) the same samples with their sources reversed — the order in which one process stacks them. Process
    ``rank`` takes the contiguous slice ``[rank · items_per_rank, (rank + 1) · items_per_rank)``; the
    concatenation of the slices over ranks is the single-process batch.
    """

    batch_size: int
    switch: bool = True
    rank: int = 0
    world_size: int = 1

    def __attrs_post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside a world of {self.world_size} processes")
        if self.items_per_step % self.world_size:
            switch = " with the Switch (2 items per sample)" if self.switch else ""
            raise ValueError(
                f"batch_size={self.batch_size}{switch} gives {self.items_per_step} items per step, which cannot be "
                f"split evenly over {self.world_size} processes: batch_size is the global batch, so make "
                f"{'2 × ' if self.switch else ''}batch_size a multiple of the number of processes"
            )

    @property
    def items_per_step(self) -> int:
        """Items of one global step (samples, doubled by the Switch)."""
        return self.batch_size * (2 if self.switch else 1)

    @property
    def items_per_rank(self) -> int:
        """Items each process prepares per step (its per-rank batch)."""
        return self.items_per_step // self.world_size

    def all_items(self) -> list[tuple[int, bool]]:
        """``(position in the global batch, reversed sources?)`` of every item, in single-process order."""
        items = [(j, False) for j in range(self.batch_size)]
        if self.switch:
            items += [(j, True) for j in range(self.batch_size)]
        return items

    def local_items(self) -> list[tuple[int, bool]]:
        """This process's slice of :meth:`all_items`."""
        start = self.rank * self.items_per_rank
        return self.all_items()[start : start + self.items_per_rank]


@attrs.define(frozen=True, eq=False)
class BatchPlan:
    """One global batch: its samples' dataset ``indices`` and the ``(len(indices), 2)`` crop ``draws`` (row ``j``
    places the crop window of sample ``j``; :meth:`tdfusion_core.training.batches.Batcher.build`)."""

    indices: tuple[int, ...]
    draws: torch.Tensor


#: the batches of one training step: ``(meta_train, meta_test)`` in the meta phase, ``(batch,)`` in the fusion phase
StepPlan = tuple[BatchPlan, ...]


@attrs.define(frozen=True)
class StepSampler:
    """Plans the steps of each phase of an epoch: their global batches and crop draws, the same in every process.

    * **Meta phase**: the epoch's :func:`meta_split`; meta step ``s`` takes samples ``s·B … s·B + B − 1`` (modulo
      the subset's length) of the meta-train half and of the meta-test half, ``B = batch_size`` (global).
    * **Fusion phase**: :func:`full_batches` of a permutation of the dataset, cycled when ``steps`` asks for more.

    Crop draws come from the phase's :func:`epoch_generator`, batch after batch in step order (meta-train before
    meta-test). ``shards`` says which items of those batches this process prepares; the union over processes is what
    one process would take, so neither the plans nor the results depend on the number of processes.
    """

    batch_size: int
    seed: int = 0
    shards: ShardedBatches = attrs.field()

    @shards.default
    def _one_process(self) -> ShardedBatches:
        return ShardedBatches(self.batch_size)

    def __attrs_post_init__(self) -> None:
        if self.shards.batch_size != self.batch_size:
            raise ValueError(f"shards of batches of {self.shards.batch_size} for a sampler of {self.batch_size}")

    def split(self, n: int, epoch: int) -> tuple[list[int], list[int]]:
        """Disjoint ``(meta_train, meta_test)`` indices of ``epoch`` over a dataset of ``n`` samples."""
        return meta_split(n, epoch, self.seed)

    def meta_steps(self, n: int, epoch: int, steps: int) -> list[StepPlan]:
        """``(meta_train, meta_test)`` plans of the ``steps`` meta steps of ``epoch``."""
        mtr, mts = self.split(n, epoch)
        gen = epoch_generator(self.seed, epoch, META_PHASE)
        b = self.batch_size
        plans = []
        for s in range(steps):
            halves = ([mtr[(s * b + j) % len(mtr)] for j in range(b)], [mts[(s * b + j) % len(mts)] for j in range(b)])
            plans.append(tuple(BatchPlan(tuple(half), crop_draws(b, gen)) for half in halves))
        return plans

    def fusion_steps(self, n: int, epoch: int, steps: int | None = None) -> list[StepPlan]:
        """``(batch,)`` plans of the fusion phase of ``epoch``: one pass over the data, or ``steps`` batches."""
        gen = epoch_generator(self.seed, epoch, FUSION_PHASE)
        batches = full_batches(torch.randperm(n, generator=gen).tolist(), self.batch_size)
        if steps is not None:
            batches = [batches[i % len(batches)] for i in range(steps)]
        return [(BatchPlan(tuple(batch), crop_draws(len(batch), gen)),) for batch in batches]

    def local_positions(self) -> list[int]:
        """Positions in a global batch of the samples this process needs (each once, in order)."""
        return sorted({j for j, _ in self.shards.local_items()})
