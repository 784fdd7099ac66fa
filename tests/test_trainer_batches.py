"""What the trainer's batch building hands to the meta and fusion steps: crops of the right sample, the task-size
image, and the Switch (every item again with its sources, crop and chroma in reverse order, same labels)."""

from __future__ import annotations

import torch

from tdfusion_core.data.sample import Sample
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
    train_half, test_half = trainer.meta_split(0)
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
