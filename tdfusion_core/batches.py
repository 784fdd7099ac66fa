"""Training batches: what one step of Algorithm 1 sees, built from dataset samples.

For every sample of a batch the :class:`Batcher` builds

* a random **crop** of the sources for the fusion loss (``crop_size``; the released code's 256x256), ``(K, h, w)``;
* the sources and chroma **resized to the task size** with the **targets** resized to match (the task loss sees the
  whole image: the released code resizes MSRS to 240x320), or kept at the image's resolution for a task with
  ``full_resolution_targets`` (the released segmentation loss upsamples the logits to the masks);
* with the **Switch**, the same sample once more with its sources (crop, task image and chroma) in reverse order
  and the same labels, so that F and G become symmetric in their inputs;

and stacks them on the device: ``(crops (B', K, h, w), TaskInput)`` with ``B' = B`` or ``2B`` with the Switch.

Crop windows are drawn for the whole global batch from the epoch's generator (:func:`tdfusion_core.seeding.epoch_generator`); the window
of sample ``j`` is derived from row ``j`` of the draws and the image size, so every process of a multi-process run
draws the same windows whatever its share (:class:`~tdfusion_core.distributed.ShardedBatches`).
``MetaTrainer.batcher`` is the trainer's; benchmarks and tests build their batches with it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as nnf

from tdfusion_core.data.sample import Sample
from tdfusion_core.distributed import ShardedBatches
from tdfusion_core.meta import TaskInput
from tdfusion_core.task import Task


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of the last two dimensions of ``(..., C, H, W)`` images (unchanged if already ``size``)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    lead = images.shape[:-3]
    flat = images.reshape(-1, *images.shape[-3:])
    out = nnf.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *out.shape[-3:])


def crop_draws(count: int, gen: torch.Generator) -> torch.Tensor:
    """Two random integers per sample of a global batch, from which each sample's crop window is derived."""
    return torch.randint(0, 2**31 - 1, (count, 2), generator=gen)


class Batcher:
    """Builds the crops and task batches of training steps (see the module docstring).

    Args:
        task: the task (its target operations resize, collate and move the targets).
        task_size: ``(H, W)`` the task sees.
        crop_size: ``(h, w)`` of the fusion loss's crops (at most the image size); ``None``: the largest window
            every image of the batch has.
        switch: also feed every sample with its sources in reverse order.
        device: where the batches go.
        shards: this process's items of each global batch (default: every item, one process).
    """

    def __init__(
        self,
        task: Task,
        task_size: tuple[int, int],
        crop_size: tuple[int, int] | None,
        switch: bool,
        device: torch.device | str = "cpu",
        shards: ShardedBatches | None = None,
    ) -> None:
        self.task = task
        self.task_size = task_size
        self.crop_size = crop_size
        self.switch = switch
        self.device = torch.device(device)
        self.shards = shards

    def all_items(self, count: int) -> list[tuple[int, bool]]:
        """``(position in the batch, sources reversed?)`` of every item of a batch of ``count`` samples."""
        items = [(j, False) for j in range(count)]
        if self.switch:
            items += [(j, True) for j in range(count)]
        return items

    def whole(self, samples: Sequence[Sample], gen: torch.Generator) -> tuple[torch.Tensor, TaskInput]:
        """Every item of a batch of loaded ``samples`` (Switch applied), on the device."""
        draws = crop_draws(len(samples), gen)
        return self.build(dict(enumerate(samples)), draws, self.all_items(len(samples)))

    def share(self, dataset: Any, indices: Sequence[int], gen: torch.Generator) -> tuple[torch.Tensor, TaskInput]:
        """This process's share of the global batch of ``dataset[indices]`` (only the samples it needs are loaded)."""
        draws = crop_draws(len(indices), gen)
        items = self.shards.local_items() if self.shards is not None else self.all_items(len(indices))
        samples = {j: dataset[int(indices[j])] for j in sorted({j for j, _ in items})}
        return self.build(samples, draws, items)

    def meta_pair(
        self, dataset: Any, train: Sequence[int], test: Sequence[int], gen: torch.Generator
    ) -> tuple[torch.Tensor, TaskInput, TaskInput]:
        """One meta step's batches: meta-train crops and task batch, then the meta-test task batch (its crops are
        drawn, keeping the generator's stream, and not used: the outer loss sees the task batch only)."""
        crop, train_batch = self.share(dataset, train, gen)
        _, test_batch = self.share(dataset, test, gen)
        return crop, train_batch, test_batch

    def build(
        self, samples: dict[int, Sample], draws: torch.Tensor, items: Sequence[tuple[int, bool]]
    ) -> tuple[torch.Tensor, TaskInput]:
        """Stack ``items`` (``(position in the batch, sources reversed?)``) of loaded ``samples``."""
        sizes = [s.size for s in samples.values()]
        if self.crop_size is None:
            ch, cw = min(h for h, _ in sizes), min(w for _, w in sizes)
        else:
            ch = min(self.crop_size[0], *(h for h, _ in sizes))
            cw = min(self.crop_size[1], *(w for _, w in sizes))
        prepared: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]] = {}
        for j, s in samples.items():
            h, w = s.size
            top = int(draws[j, 0]) % (h - ch + 1)
            left = int(draws[j, 1]) % (w - cw + 1)
            target = self.loss_target(s.target, s.size) if s.target is not None else None
            prepared[j] = (
                s.sources[:, top : top + ch, left : left + cw],
                resize_images(s.sources[None], self.task_size)[0],
                resize_images(s.chroma, self.task_size),
                target,
            )
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
