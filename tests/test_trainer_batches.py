"""What the trainer's batch building hands to the meta and fusion steps: crops of the right sample, the task-size
image, and the Switch (every item again with its sources, crop and chroma in reverse order, same labels)."""

from __future__ import annotations

import torch

from tdfusion_core.data import loading
from tdfusion_core.data.sample import Sample
from tdfusion_core.kernel.meta import TaskInput
from tdfusion_core.training import batches
from tests.torch_threads import one_torch_thread  # noqa: F401
from tests.trainer_utils import BlobScenes, small_trainer


class ColourScenes(BlobScenes):
    """:class:`BlobScenes` whose two sources carry different chroma, so a chroma left unswitched shows."""

    def __getitem__(self, i: int) -> Sample:
        s = super().__getitem__(i)
        g = torch.Generator().manual_seed(100 + i)
        chroma = torch.rand(s.chroma.shape, generator=g)
        return Sample(s.sources, chroma, s.target, s.name)


def _capture(trainer, name):
    calls = []
    original = getattr(trainer, name)

    def spy(*args):
        calls.append(args)
        return original(*args)

    setattr(trainer, name, spy)
    return calls


def _source_of(dataset, sources: torch.Tensor) -> int:
    """Index of the dataset item whose (task-size) sources are ``sources``."""
    hits = [i for i in range(len(dataset)) if torch.equal(dataset[i].sources, sources)]
    assert len(hits) == 1, hits
    return hits[0]


def _is_window_of(crop: torch.Tensor, image: torch.Tensor) -> bool:
    ch, cw = crop.shape[-2:]
    h, w = image.shape[-2:]
    return any(
        torch.equal(image[..., t : t + ch, l : l + cw], crop) for t in range(h - ch + 1) for l in range(w - cw + 1)
    )


def _check_switched(dataset, crop, batch, batch_size):
    """Items ``j`` and ``j + B`` are one sample in both source orders (crop, task image, chroma), same labels."""
    assert crop.shape[0] == batch.sources.shape[0] == 2 * batch_size
    for j in range(batch_size):
        i = _source_of(dataset, batch.sources[j])
        sample = dataset[i]
        assert torch.equal(batch.chroma[j], sample.chroma)
        assert _is_window_of(crop[j], sample.sources)
        k = j + batch_size
        assert torch.equal(crop[k], crop[j].flip(0)), "crop not switched"
        assert torch.equal(batch.sources[k], batch.sources[j].flip(0)), "task sources not switched"
        assert torch.equal(batch.chroma[k], batch.chroma[j].flip(0)), "chroma not switched"
        assert torch.equal(batch.targets[k], batch.targets[j]), "labels must not change with the source order"
        assert torch.equal(batch.targets[j], sample.target)


def test_fusion_phase_batches_hold_each_sample_in_both_source_orders():
    trainer = small_trainer(epochs=1, meta_steps=0, fusion_steps=2, batch_size=2, task_step="sgd")
    trainer.train_set = ColourScenes(8)
    calls = _capture(trainer, "fusion_update")
    trainer.fusion_phase(0)
    assert len(calls) == 2
    for crop, batch in calls:
        assert crop.shape[-2:] == (16, 16)  # crop_size
        assert batch.sources.shape[-2:] == (24, 32)  # task_size
        _check_switched(trainer.train_set, crop, batch, batch_size=2)


def test_meta_phase_batches_hold_each_sample_in_both_source_orders():
    trainer = small_trainer(epochs=1, meta_steps=2, batch_size=1, task_step="sgd")
    trainer.train_set = ColourScenes(8)
    calls = _capture(trainer, "meta_update")
    trainer.meta_phase(0)
    assert len(calls) == 2
    train_half, test_half = trainer.sampler.split(len(trainer.train_set), 0)
    for crop, mtr, mts in calls:
        _check_switched(trainer.train_set, crop, mtr, batch_size=1)
        assert _source_of(trainer.train_set, mtr.sources[0]) in train_half
        assert _source_of(trainer.train_set, mts.sources[0]) in test_half
        assert torch.equal(mts.sources[1], mts.sources[0].flip(0))
        assert torch.equal(mts.chroma[1], mts.chroma[0].flip(0))


def test_without_the_switch_each_sample_comes_once():
    trainer = small_trainer(epochs=1, meta_steps=0, fusion_steps=1, batch_size=2, switch=False, task_step="sgd")
    trainer.train_set = ColourScenes(8)
    calls = _capture(trainer, "fusion_update")
    trainer.fusion_phase(0)
    (crop, batch) = calls[0]
    assert crop.shape[0] == batch.sources.shape[0] == 2
    assert _source_of(trainer.train_set, batch.sources[0]) != _source_of(trainer.train_set, batch.sources[1])


def test_crops_are_the_windows_the_sampler_draws():
    """Crop ``j`` of a step is the window that row ``j`` of the plan's draws places (``draw % (size - crop + 1)``)."""
    trainer = small_trainer(epochs=1, meta_steps=0, fusion_steps=3, batch_size=2, crop_size=(16, 20), task_step="sgd")
    trainer.train_set = ColourScenes(8)
    calls = _capture(trainer, "fusion_update")
    trainer.fusion_phase(0)
    plans = trainer.sampler.fusion_steps(len(trainer.train_set), 0, 3)
    assert len(calls) == len(plans) == 3
    for (crop, _), (plan,) in zip(calls, plans):
        for j, index in enumerate(plan.indices):
            sources = trainer.train_set[index].sources
            top = int(plan.draws[j, 0]) % (sources.shape[-2] - 16 + 1)
            left = int(plan.draws[j, 1]) % (sources.shape[-1] - 20 + 1)
            assert torch.equal(crop[j], sources[:, top : top + 16, left : left + 20])


def _tensors(value) -> list[torch.Tensor]:
    """Every tensor of a step's arguments (crops, TaskInput fields, collated targets), in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, TaskInput):
        return _tensors([value.sources, value.chroma, value.targets])
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    assert value is None, type(value)
    return []


def _run(num_workers: int, monkeypatch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    trainer = small_trainer(epochs=2, batch_size=2, num_workers=num_workers, task_step="sgd")
    trainer.train_set = ColourScenes(8)
    meta, fusion = _capture(trainer, "meta_update"), _capture(trainer, "fusion_update")
    reads = []

    def read_groups(dataset, groups, workers, *prepare):
        reads.append(workers)
        return loading.read_groups(dataset, groups, workers, *prepare)

    monkeypatch.setattr(batches, "read_groups", read_groups)
    trainer.fit()
    assert len(meta) == 4 and len(fusion) == 6
    assert reads == [num_workers] * 4  # every phase of both epochs read through the configured workers
    nets = (trainer.fusion_net, trainer.loss_generator, trainer.task.network)
    return _tensors(meta + fusion), [t for net in nets for t in net.state_dict().values()]


def test_worker_processes_give_the_same_batches_and_weights(monkeypatch):
    """Samples read by 2 worker processes: every batch and the trained weights equal a run that reads in-process."""
    (batches0, weights0), (batches2, weights2) = _run(0, monkeypatch), _run(2, monkeypatch)
    assert len(batches0) == len(batches2) > 0
    assert all(torch.equal(a, b) for a, b in zip(batches0, batches2))
    assert all(torch.equal(a, b) for a, b in zip(weights0, weights2, strict=True))
