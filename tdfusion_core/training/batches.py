"""Training batches: what one step of Algorithm 1 sees, built from dataset samples.

The training data path, from the sampler to a step's tensors::

    StepSampler (tdfusion_core.data.sampling)   the epoch's global batches and crop draws, drawn up front
      -> read_groups (tdfusion_core.data.loading)   dataset[i] of the samples this process needs and their
                                                    sample_images (crops, task-size images), in num_workers
                                                    worker processes when > 0
      -> Batcher.assemble   targets for the task loss, the Switch, stacked on the device

:meth:`Batcher.meta_phase` and :meth:`Batcher.fusion_phase` run it for a whole phase and yield one step's batches
at a time. For every sample of a batch the :class:`Batcher` builds

* a random **crop** of the sources for the fusion loss (``crop_size``; the released code's 256x256), ``(K, h, w)``;
* the sources and chroma **resized to the task size** with the **targets** resized to match (the task loss sees the
  whole image: the released code resizes MSRS to 240x320), or kept at the image's resolution for a task with
  ``full_resolution_targets`` (the released segmentation loss upsamples the logits to the masks);
* with the **Switch**, the same sample once more with its sources (crop, task image and chroma) in reverse order
  and the same labels, so that F and G become symmetric in their inputs;

and stacks them on the device: ``(crops (B', K, h, w), TaskInput)`` with ``B' = B`` or ``2B`` with the Switch.

The window of sample ``j`` is derived from row ``j`` of its batch's crop draws and the image size, so every process
of a multi-process run places the same windows whatever its share (:class:`~tdfusion_core.data.sampling.ShardedBatches`),
and the worker processes, which only read samples, cannot change them. ``MetaTrainer.batcher`` is the trainer's;
benchmarks and tests build their batches with it too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as nnf

from tdfusion_core.data.loading import read_groups
from tdfusion_core.data.sample import Sample
from tdfusion_core.data.sampling import ShardedBatches, StepPlan, StepSampler, crop_draws
from tdfusion_core.kernel.meta import TaskInput
from tdfusion_core.kernel.task import Task


def resize_images(images: torch.Tensor, size: tuple[int, int], antialias: bool = False) -> torch.Tensor:
    """Bilinear resize of the last two dimensions of ``(..., C, H, W)`` images (unchanged if already ``size``).

    Training resizes without antialiasing, as the released code does; ``tdfusion fuse --resize`` antialiases, since
    it may shrink a visible image onto a smaller infrared grid.
    """
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    lead = images.shape[:-3]
    flat = images.reshape(-1, *images.shape[-3:])
    out = nnf.interpolate(flat, size=size, mode="bilinear", align_corners=False, antialias=antialias)
    return out.reshape(*lead, *out.shape[-3:])


class SampleImages(NamedTuple):
    """A sample's image work, done before the task is involved (in a worker process when ``num_workers > 0``)."""

    crop: torch.Tensor  #: ``(K, h, w)`` window for the fusion loss
    sources: torch.Tensor  #: ``(K, H, W)`` at the task size
    chroma: torch.Tensor  #: ``(K, 2, H, W)`` at the task size
    target: Any  #: as loaded
    size: tuple[int, int]  #: the image's ``(H, W)``


def sample_images(
    samples: dict[int, Sample],
    draws: torch.Tensor,
    crop_size: tuple[int, int] | None,
    task_size: tuple[int, int],
) -> dict[int, SampleImages]:
    """Crop (row ``j`` of ``draws`` places sample ``j``'s window) and resize each of a batch's ``samples``.

    The crop is ``crop_size`` or smaller, the largest window every image of ``samples`` has (all of them for
    ``None``). It needs no task, so it runs where the samples are read.
    """
    sizes = [s.size for s in samples.values()]
    if crop_size is None:
        ch, cw = min(h for h, _ in sizes), min(w for _, w in sizes)
    else:
        ch = min(crop_size[0], *(h for h, _ in sizes))
        cw = min(crop_size[1], *(w for _, w in sizes))
    out = {}
    for j, s in samples.items():
        h, w = s.size
        top = int(draws[j, 0]) % (h - ch + 1)
        left = int(draws[j, 1]) % (w - cw + 1)
        out[j] = SampleImages(
            s.sources[:, top : top + ch, left : left + cw].clone(),  # not a view: a worker sends only the window
            resize_images(s.sources[None], task_size)[0],
            resize_images(s.chroma, task_size),
            s.target,
            s.size,
        )
    return out


def _step_images(
    samples: list[Sample], step: tuple[list[int], list[torch.Tensor], tuple[int, int] | None, tuple[int, int]]
) -> list[dict[int, SampleImages]]:
    """:func:`sample_images` of each batch of a step whose samples were read in order (``read_groups``'s
    ``prepare``): ``step`` is ``(positions read per batch, each batch's draws, crop size, task size)``."""
    positions, draws, crop_size, task_size = step
    n = len(positions)
    return [
        sample_images(dict(zip(positions, samples[k * n : (k + 1) * n])), d, crop_size, task_size)
        for k, d in enumerate(draws)
    ]


class MetaBatches(NamedTuple):
    """One meta step's batches: the meta-train crops (Lf), the meta-train and the meta-test task batches (Lt)."""

    crop: torch.Tensor
    meta_train: TaskInput
    meta_test: TaskInput


class FusionBatches(NamedTuple):
    """One fusion step's batches: the crops (Lf) and the task batch (Lt)."""

    crop: torch.Tensor
    batch: TaskInput


class PhaseBatches:
    """The batches of a phase's steps, built one step at a time as they are iterated (``len()``: the steps)."""

    def __init__(self, batcher: Batcher, dataset: Any, plans: list[StepPlan], meta: bool) -> None:
        self.batcher, self.dataset, self.plans, self.meta = batcher, dataset, plans, meta

    def __len__(self) -> int:
        return len(self.plans)

    def __iter__(self) -> Iterator[Any]:
        b = self.batcher
        positions = b.sampler.local_positions()
        items = b.sampler.shards.local_items()
        groups = [[plan.indices[j] for plan in step for j in positions] for step in self.plans]
        work = [(positions, [plan.draws for plan in step], b.crop_size, b.task_size) for step in self.plans]
        for images in read_groups(self.dataset, groups, b.num_workers, _step_images, work):
            built = [b.assemble(batch, items) for batch in images]
            if self.meta:
                (crop, meta_train), (_, meta_test) = built
                yield MetaBatches(crop, meta_train, meta_test)
            else:
                yield FusionBatches(*built[0])


class Batcher:
    """Builds the crops and task batches of training steps (see the module docstring).

    Args:
        task: the task (its target operations resize, collate and move the targets).
        task_size: ``(H, W)`` the task sees.
        crop_size: ``(h, w)`` of the fusion loss's crops (at most the image size); ``None``: the largest window
            every image of the batch has.
        switch: also feed every sample with its sources in reverse order.
        device: where the batches go.
        sampler: plans the phases' steps and this process's share of each batch (default: batches of one sample,
            one process).
        num_workers: worker processes that read the samples of :meth:`meta_phase` and :meth:`fusion_phase` (0:
            read in this process; :func:`~tdfusion_core.data.loading.read_groups`).
    """

    def __init__(
        self,
        task: Task,
        task_size: tuple[int, int],
        crop_size: tuple[int, int] | None,
        switch: bool,
        device: torch.device | str = "cpu",
        sampler: StepSampler | None = None,
        num_workers: int = 0,
    ) -> None:
        self.task = task
        self.task_size = task_size
        self.crop_size = crop_size
        self.switch = switch
        self.device = torch.device(device)
        self.sampler = sampler if sampler is not None else StepSampler(1, shards=ShardedBatches(1, switch))
        if self.sampler.shards.switch != switch:
            raise ValueError(f"the sampler's shards have switch={self.sampler.shards.switch}, the batcher {switch}")
        self.num_workers = num_workers

    def meta_phase(self, dataset: Any, epoch: int, steps: int) -> PhaseBatches:
        """The :class:`MetaBatches` of the ``steps`` meta steps of ``epoch`` (this process's share)."""
        return PhaseBatches(self, dataset, self.sampler.meta_steps(len(dataset), epoch, steps), meta=True)

    def fusion_phase(self, dataset: Any, epoch: int, steps: int | None = None) -> PhaseBatches:
        """The :class:`FusionBatches` of the fusion phase of ``epoch``: one pass over ``dataset``, or ``steps``."""
        return PhaseBatches(self, dataset, self.sampler.fusion_steps(len(dataset), epoch, steps), meta=False)

    def whole(self, samples: Sequence[Sample], gen: torch.Generator) -> tuple[torch.Tensor, TaskInput]:
        """Every item of a batch of loaded ``samples`` (Switch applied, crop draws from ``gen``), on the device."""
        draws = crop_draws(len(samples), gen)
        return self.build(dict(enumerate(samples)), draws, ShardedBatches(len(samples), self.switch).all_items())

    def build(
        self, samples: dict[int, Sample], draws: torch.Tensor, items: Sequence[tuple[int, bool]]
    ) -> tuple[torch.Tensor, TaskInput]:
        """Stack ``items`` (``(position in the batch, sources reversed?)``) of loaded ``samples``."""
        return self.assemble(sample_images(samples, draws, self.crop_size, self.task_size), items)

    def assemble(
        self, images: dict[int, SampleImages], items: Sequence[tuple[int, bool]]
    ) -> tuple[torch.Tensor, TaskInput]:
        """Stack ``items`` of a batch's :func:`sample_images`: targets for the task loss, the Switch, the device."""
        prepared = {
            j: (im.crop, im.sources, im.chroma, self.loss_target(im.target, im.size) if im.target is not None else None)
            for j, im in images.items()
        }
        crops, task_sources, task_chroma, targets = [], [], [], []
        for j, reverse in items:
            crop, sources, chroma, target = prepared[j]
            if reverse:  # the Switch: the same sample with its sources in reverse order, same labels
                crop, sources, chroma = crop.flip(0), sources.flip(0), chroma.flip(0)
            crops.append(crop)
            task_sources.append(sources)
            task_chroma.append(chroma)
            targets.append(target)
        targets = self.common_resolution(targets)
        collated = self.task.collate_targets(targets) if any(t is not None for t in targets) else None
        batch = TaskInput(
            torch.stack(task_sources).to(self.device),
            torch.stack(task_chroma).to(self.device),
            self.task.targets_to(collated, self.device),
        )
        return torch.stack(crops).to(self.device), batch

    def task_view(self, samples: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Sources and chroma at the task size (on the CPU) and the targets resized and collated on the device, of
        ``samples`` as they are (no crop, no Switch): what evaluation feeds F and T."""
        sources = torch.stack([resize_images(s.sources[None], self.task_size)[0] for s in samples])
        chroma = torch.stack([resize_images(s.chroma, self.task_size) for s in samples])
        targets = self.common_resolution([self.loss_target(s.target, s.size) for s in samples])
        return sources, chroma, self.task.targets_to(self.task.collate_targets(targets), self.device)

    def loss_target(self, target: Any, size: tuple[int, int]) -> Any:
        """A sample's target for the task loss: resized to the task size, or kept at the image's resolution for a
        task with ``full_resolution_targets`` (masks; its loss upsamples the logits to them, as released)."""
        if getattr(self.task, "full_resolution_targets", False):
            return target
        return self.task.resize_targets(target, size, self.task_size)

    def common_resolution(self, targets: list[Any]) -> list[Any]:
        """Full-resolution masks of different sizes, resized (nearest) to the largest so that they stack; each
        still covers its whole image, as the task input does."""
        sizes = {(int(t.shape[-2]), int(t.shape[-1])) for t in targets if isinstance(t, torch.Tensor)}
        if len(sizes) <= 1 or not getattr(self.task, "full_resolution_targets", False):
            return targets
        largest = max(sizes, key=lambda hw: hw[0] * hw[1])
        return [
            self.task.resize_targets(t, (int(t.shape[-2]), int(t.shape[-1])), largest)
            if isinstance(t, torch.Tensor)
            else t
            for t in targets
        ]
