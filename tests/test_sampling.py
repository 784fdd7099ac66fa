"""Sampling: the meta split, each step's global batches and crop draws, and each process's share of them.

The plans are checked against the scheme the docs state (docs/datasets.md, "How training reads the data"), written
out here from :func:`meta_split`, :func:`epoch_generator` and ``torch.randint``: a change of that stream would change
every run's batches and break resume-equivalence with runs started before it.
"""

from __future__ import annotations

import pytest
import torch

from tdfusion_core.data.sampling import (
    FUSION_PHASE,
    META_PHASE,
    ShardedBatches,
    StepSampler,
    epoch_generator,
    full_batches,
    meta_split,
)


def test_meta_split_is_disjoint_seeded_and_changes_per_epoch():
    n = 11
    tr, ts = meta_split(n, epoch=0, seed=5)
    assert len(tr) == 6 and len(ts) == 5 and not set(tr) & set(ts) and set(tr) | set(ts) == set(range(n))
    assert meta_split(n, 0, 5) == (tr, ts)
    assert meta_split(n, 1, 5) != (tr, ts) and meta_split(n, 0, 6) != (tr, ts)
    for epoch in range(5):
        a, b = meta_split(100, epoch, seed=1, meta_train_size=10, meta_test_size=20)
        assert len(a) == 10 and len(b) == 20 and not set(a) & set(b) and max(a + b) < 100
    with pytest.raises(ValueError, match="together <= 10"):
        meta_split(10, 0, meta_train_size=6, meta_test_size=5)
    with pytest.raises(ValueError, match="at least 2"):
        meta_split(1, 0)


def test_full_batches_complete_the_last_batch():
    assert full_batches([4, 2, 0, 1, 3], 2) == [[4, 2], [0, 1], [3, 4]]
    assert full_batches([1, 0], 3) == [[1, 0, 1]]
    assert full_batches([], 2) == []


def test_meta_plans_follow_the_documented_scheme():
    n, b, seed, epoch = 9, 2, 3, 4
    plans = StepSampler(b, seed).meta_steps(n, epoch, steps=4)
    mtr, mts = meta_split(n, epoch, seed)
    gen = epoch_generator(seed, epoch, META_PHASE)
    assert len(plans) == 4
    for s, (train, test) in enumerate(plans):
        assert train.indices == tuple(mtr[(s * b + j) % len(mtr)] for j in range(b))
        assert test.indices == tuple(mts[(s * b + j) % len(mts)] for j in range(b))
        assert torch.equal(train.draws, torch.randint(0, 2**31 - 1, (b, 2), generator=gen))  # meta-train first
        assert torch.equal(test.draws, torch.randint(0, 2**31 - 1, (b, 2), generator=gen))


@pytest.mark.parametrize("steps", [None, 2, 7])
def test_fusion_plans_follow_the_documented_scheme(steps):
    n, b, seed, epoch = 7, 3, 1, 2
    plans = StepSampler(b, seed).fusion_steps(n, epoch, steps)
    gen = epoch_generator(seed, epoch, FUSION_PHASE)
    batches = full_batches(torch.randperm(n, generator=gen).tolist(), b)  # one pass: 3 batches, the last completed
    expected = batches if steps is None else [batches[i % len(batches)] for i in range(steps)]
    assert [plan.indices for (plan,) in plans] == [tuple(x) for x in expected]
    for (plan,) in plans:  # a batch that comes round again gets new draws
        assert torch.equal(plan.draws, torch.randint(0, 2**31 - 1, (b, 2), generator=gen))


def test_plans_are_the_same_in_every_process_and_touch_no_global_generator():
    plans = []
    for rank in range(2):
        sampler = StepSampler(2, seed=5, shards=ShardedBatches(2, True, rank, 2))
        state = torch.get_rng_state()
        plans.append((sampler.meta_steps(10, 1, 3), sampler.fusion_steps(10, 1)))
        assert torch.equal(torch.get_rng_state(), state)
    for one, other in zip(*plans):
        for step_a, step_b in zip(one, other):
            for a, b in zip(step_a, step_b):
                assert a.indices == b.indices and torch.equal(a.draws, b.draws)
    assert not torch.equal(StepSampler(2, seed=6).fusion_steps(10, 1)[0][0].draws, plans[0][1][0][0].draws)


def test_each_process_reads_only_the_samples_of_its_share():
    # with the Switch, 2 processes split batch_size 2 into originals (rank 0) and reversed copies (rank 1)
    assert StepSampler(2, shards=ShardedBatches(2, True, 0, 2)).local_positions() == [0, 1]
    # without it, each takes one sample
    assert [StepSampler(2, shards=ShardedBatches(2, False, r, 2)).local_positions() for r in range(2)] == [[0], [1]]
    # batch 1 with the Switch over 2 processes: both need sample 0, in opposite source orders
    shards = [ShardedBatches(1, True, r, 2).local_items() for r in range(2)]
    assert shards == [[(0, False)], [(0, True)]]
    with pytest.raises(ValueError, match="shards of batches of 3"):
        StepSampler(2, shards=ShardedBatches(3))


def test_shards_union_is_the_single_process_batch():
    for batch, switch, world in [(2, True, 2), (1, True, 2), (4, False, 4), (3, True, 3), (2, True, 4)]:
        single = ShardedBatches(batch, switch).all_items()
        union = [it for r in range(world) for it in ShardedBatches(batch, switch, r, world).local_items()]
        assert union == single
        assert all(
            len(ShardedBatches(batch, switch, r, world).local_items()) == len(single) // world for r in range(world)
        )


def test_uneven_shards_are_refused_with_a_clear_message():
    with pytest.raises(ValueError, match=r"batch_size=1 with the Switch .* 2 items .* 4 processes"):
        ShardedBatches(1, True, 0, 4)
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        ShardedBatches(3, False, 0, 2)
