"""Joint transforms of a :class:`~tdfusion_core.data.Sample` that keep its labels consistent with its images,
collate functions, seeded loaders and the per-epoch meta-train / meta-test split.

A transform is any callable ``Sample -> Sample``; chain them with :class:`Compose`. Geometric transforms move the
sources, their chroma and the target together: masks with nearest neighbour (255 = ignore where padding adds
pixels), boxes scaled / shifted, clipped to the image and dropped when their width or height is no longer positive.
Targets are recognised by type (:func:`~tdfusion_core.data.targets.infer_target_kind`); a dict of targets (e.g.
``{"mask": ..., "boxes": ...}``) is transformed entry by entry. A task with its own target type passes itself as
``target_ops`` (anything with ``resize_targets``, ``crop_targets`` and ``hflip_targets``, as
:class:`tdfusion_core.task.Task` has).

Randomness: a transform draws from its own ``generator`` if given, else from the generator of the surrounding
:func:`random_context`, else from torch's global generator. :func:`make_loader` gives every sample its own seeded
generator drawn in the main process, so augmentations are reproducible from ``seed`` whatever ``num_workers`` is,
and differ from epoch to epoch.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as nnf
from torch.utils.data import DataLoader, Dataset, Sampler

from tdfusion_core.data import targets as target_ops_module
from tdfusion_core.data.sample import Batch, Sample, collate_samples
from tdfusion_core.sizes import parse_size

Transform = Callable[[Sample], Sample]

_RNG: contextvars.ContextVar[torch.Generator | None] = contextvars.ContextVar("tdfusion_transform_rng", default=None)


@contextlib.contextmanager
def random_context(generator: torch.Generator | None) -> Iterator[None]:
    """Make ``generator`` the source of randomness of transforms (without their own) inside the block."""
    token = _RNG.set(generator)
    try:
        yield
    finally:
        _RNG.reset(token)


def mix_seed(*values: int) -> int:
    """A 63-bit seed mixed from integers (``numpy.random.SeedSequence``): for per-epoch / per-index streams."""
    return int(
        np.random.SeedSequence([int(v) & 0xFFFFFFFFFFFFFFFF for v in values]).generate_state(2, np.uint64)[0] >> 1
    )


def _rand(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator if generator is not None else _RNG.get()))


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in ``[low, high]`` (inclusive)."""
    g = generator if generator is not None else _RNG.get()
    return int(torch.randint(low, high + 1, (), generator=g))


# ---------------------------------------------------------------------------------------------------- target ops
class TargetOps(Protocol):
    """What a transform needs to move a target: the three methods of :class:`tdfusion_core.task.Task`."""

    def resize_targets(self, target: Any, size: tuple[int, int], new_size: tuple[int, int]) -> Any: ...

    def crop_targets(self, target: Any, top: int, left: int, height: int, width: int) -> Any: ...

    def hflip_targets(self, target: Any, width: int) -> Any: ...


class DefaultTargetOps:
    """Target operations for masks, boxes, ``None`` and dicts of them, recognised by type."""

    def __init__(self, ignore_index: int = 255) -> None:
        self.ignore_index = ignore_index

    def resize_targets(self, target: Any, size: tuple[int, int], new_size: tuple[int, int]) -> Any:
        if isinstance(target, dict):
            return {k: self.resize_targets(v, size, new_size) for k, v in target.items()}
        kind = target_ops_module.infer_target_kind(target)
        if kind == "mask":
            return target_ops_module.resize_mask(target, new_size)
        if kind == "boxes":
            return target_ops_module.resize_boxes(target, size, new_size)
        return target

    def crop_targets(self, target: Any, top: int, left: int, height: int, width: int) -> Any:
        if isinstance(target, dict):
            return {k: self.crop_targets(v, top, left, height, width) for k, v in target.items()}
        kind = target_ops_module.infer_target_kind(target)
        if kind == "mask":
            return target[..., top : top + height, left : left + width]
        if kind == "boxes":
            return target_ops_module.crop_boxes(target, top, left, height, width)
        return target

    def hflip_targets(self, target: Any, width: int) -> Any:
        if isinstance(target, dict):
            return {k: self.hflip_targets(v, width) for k, v in target.items()}
        kind = target_ops_module.infer_target_kind(target)
        if kind == "mask":
            return target.flip(-1)
        if kind == "boxes":
            return target_ops_module.hflip_boxes(target, width)
        return target

    def pad_targets(self, target: Any, height: int, width: int) -> Any:
        """Pad at the bottom / right to ``(height, width)``: masks with the ignore index, boxes unchanged."""
        if isinstance(target, dict):
            return {k: self.pad_targets(v, height, width) for k, v in target.items()}
        if target_ops_module.infer_target_kind(target) == "mask":
            return target_ops_module.pad_mask(target, height, width, self.ignore_index)
        return target


def _ops(target_ops: TargetOps | None) -> Any:
    return target_ops if target_ops is not None else DefaultTargetOps()


# ---------------------------------------------------------------------------------------------------- transforms
class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def _check_size(size: int | Sequence[int], what: str) -> tuple[int, int]:
    return parse_size(size, what=f"{what} size")


def crop(sample: Sample, top: int, left: int, height: int, width: int, target_ops: TargetOps | None = None) -> Sample:
    """The window ``[top:top+height, left:left+width]`` of a sample (it must lie inside the image)."""
    H, W = sample.size
    if top < 0 or left < 0 or top + height > H or left + width > W:
        raise ValueError(f"crop window {(top, left, height, width)} leaves the {H}x{W} image of {sample.name!r}")
    return Sample(
        sources=sample.sources[..., top : top + height, left : left + width],
        chroma=sample.chroma[..., top : top + height, left : left + width],
        target=_ops(target_ops).crop_targets(sample.target, top, left, height, width)
        if sample.target is not None
        else None,
        name=sample.name,
    )


def pad_to(sample: Sample, height: int, width: int, target_ops: TargetOps | None = None) -> Sample:
    """Pad a sample at the bottom / right to at least ``(height, width)``: sources 0, chroma 0.5, masks ignore."""
    H, W = sample.size
    nh, nw = max(H, height), max(W, width)
    if (nh, nw) == (H, W):
        return sample
    ops = _ops(target_ops)
    if sample.target is not None and not hasattr(ops, "pad_targets"):
        raise ValueError(f"sample {sample.name!r} is smaller than {height}x{width} and its targets cannot be padded")
    sources = nnf.pad(sample.sources, (0, nw - W, 0, nh - H), value=0.0)
    chroma = nnf.pad(sample.chroma, (0, nw - W, 0, nh - H), value=0.5)
    target = ops.pad_targets(sample.target, nh, nw) if sample.target is not None else None
    return Sample(sources=sources, chroma=chroma, target=target, name=sample.name)


def resize(
    sample: Sample, size: tuple[int, int], target_ops: TargetOps | None = None, antialias: bool = False
) -> Sample:
    """Bilinear resize of sources and chroma to ``size`` ``(H, W)``; masks nearest, boxes scaled."""
    if sample.size == tuple(size):
        return sample

    def interp(x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, 1, *x.shape[-2:])
        out = nnf.interpolate(flat, size=size, mode="bilinear", align_corners=False, antialias=antialias)
        return out.reshape(*x.shape[:-2], *size)

    return Sample(
        sources=interp(sample.sources).clamp(0, 1),
        chroma=interp(sample.chroma).clamp(0, 1),
        target=_ops(target_ops).resize_targets(sample.target, sample.size, tuple(size))
        if sample.target is not None
        else None,
        name=sample.name,
    )


def hflip(sample: Sample, target_ops: TargetOps | None = None) -> Sample:
    """Mirror a sample left-right."""
    return Sample(
        sources=sample.sources.flip(-1),
        chroma=sample.chroma.flip(-1),
        target=_ops(target_ops).hflip_targets(sample.target, sample.size[1]) if sample.target is not None else None,
        name=sample.name,
    )


def switch(sample: Sample, order: Sequence[int] | None = None) -> Sample:
    """Reorder the sources (default: reverse, the paper's "Switch" of infrared and visible); target unchanged."""
    K = sample.sources.shape[0]
    idx = list(reversed(range(K))) if order is None else [int(i) for i in order]
    if sorted(idx) != list(range(K)):
        raise ValueError(f"source order {idx} is not a permutation of {K} sources")
    return Sample(sources=sample.sources[idx], chroma=sample.chroma[idx], target=sample.target, name=sample.name)


class RandomCrop:
    """Crop a random ``size`` window (the released code crops 256x256 for the fusion loss).

    Images smaller than ``size`` are padded at the bottom / right first when ``pad_if_needed`` (masks with the
    ignore index), else raise an error naming the sample.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        pad_if_needed: bool = False,
        target_ops: TargetOps | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.size = _check_size(size, "crop")
        self.pad_if_needed = pad_if_needed
        self.target_ops = target_ops
        self.generator = generator

    def __call__(self, sample: Sample) -> Sample:
        h, w = self.size
        H, W = sample.size
        if H < h or W < w:
            if not self.pad_if_needed:
                raise ValueError(
                    f"sample {sample.name!r} is {H}x{W}, smaller than the {h}x{w} crop; resize first or "
                    "pass pad_if_needed=True"
                )
            sample = pad_to(sample, h, w, self.target_ops)
            H, W = sample.size
        top = _randint(0, H - h, self.generator)
        left = _randint(0, W - w, self.generator)
        return crop(sample, top, left, h, w, self.target_ops)

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, pad_if_needed={self.pad_if_needed})"


class CenterCrop:
    """Crop the central ``size`` window (deterministic; for evaluation)."""

    def __init__(self, size: int | Sequence[int], target_ops: TargetOps | None = None) -> None:
        self.size = _check_size(size, "crop")
        self.target_ops = target_ops

    def __call__(self, sample: Sample) -> Sample:
        (h, w), (H, W) = self.size, sample.size
        if H < h or W < w:
            raise ValueError(f"sample {sample.name!r} is {H}x{W}, smaller than the {h}x{w} crop")
        return crop(sample, (H - h) // 2, (W - w) // 2, h, w, self.target_ops)

    def __repr__(self) -> str:
        return f"CenterCrop(size={self.size})"


class Resize:
    """Resize to ``size`` ``(H, W)`` (bilinear without antialiasing by default, as the released code)."""

    def __init__(self, size: int | Sequence[int], antialias: bool = False, target_ops: TargetOps | None = None) -> None:
        self.size = _check_size(size, "resize")
        self.antialias = antialias
        self.target_ops = target_ops

    def __call__(self, sample: Sample) -> Sample:
        return resize(sample, self.size, self.target_ops, self.antialias)

    def __repr__(self) -> str:
        return f"Resize(size={self.size}, antialias={self.antialias})"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``."""

    def __init__(
        self, p: float = 0.5, target_ops: TargetOps | None = None, generator: torch.Generator | None = None
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {p}")
        self.p = p
        self.target_ops = target_ops
        self.generator = generator

    def __call__(self, sample: Sample) -> Sample:
        return hflip(sample, self.target_ops) if _rand(self.generator) < self.p else sample

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Switch:
    """The paper's "Switch": reorder the sources (default reversed) with probability ``p``; labels unchanged.

    With ``p=1`` every sample is switched. The released code instead feeds each batch in both orders;
    :meth:`tdfusion_core.data.Batch.switched` does that at batch level.
    """

    def __init__(
        self, p: float = 0.5, order: Sequence[int] | None = None, generator: torch.Generator | None = None
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {p}")
        self.p = p
        self.order = None if order is None else [int(i) for i in order]
        self.generator = generator

    def __call__(self, sample: Sample) -> Sample:
        if self.p >= 1.0 or _rand(self.generator) < self.p:
            return switch(sample, self.order)
        return sample

    def __repr__(self) -> str:
        return f"Switch(p={self.p}, order={self.order})"


# ---------------------------------------------------------------------------------------------------- collate
def collate_masks(targets: list[torch.Tensor]) -> torch.Tensor:
    """Stack masks ``(H, W)`` of equal size into ``(B, H, W)``."""
    shapes = {tuple(t.shape) for t in targets}
    if len(shapes) != 1:
        raise ValueError(f"masks of different sizes cannot be batched: {sorted(shapes)}")
    return torch.stack(targets)


def collate_boxes(targets: list[torch.Tensor]) -> list[torch.Tensor]:
    """Keep per-image boxes ``(N_i, 5)`` as a list (the number of boxes varies); ``None`` becomes ``(0, 5)``.

    :func:`~tdfusion_core.data.targets.boxes_with_batch_index` turns the list into one ``(M, 6)`` tensor.
    """
    return [t.float().reshape(-1, 5) if t is not None else torch.zeros(0, 5) for t in targets]


def collate_targets_auto(targets: list[Any]) -> Any:
    """Collate by kind: masks stacked, boxes as a list, dicts key by key, anything else as a list."""
    first = next((t for t in targets if t is not None), None)
    if isinstance(first, dict):
        return {k: collate_targets_auto([t[k] for t in targets]) for k in first}
    try:
        kind = target_ops_module.infer_target_kind(first)
    except TypeError:
        return list(targets)
    if kind == "mask":
        return collate_masks(targets)
    if kind == "boxes":
        return collate_boxes(targets)
    return list(targets)


def collate_for(target_kind: str) -> Callable[[list[Any]], Any]:
    """The collate function of a target kind: ``"mask"``, ``"boxes"`` or anything else (auto)."""
    if target_kind == "mask":
        return collate_masks
    if target_kind == "boxes":
        return collate_boxes
    return collate_targets_auto


# ---------------------------------------------------------------------------------------------------- loaders
class TransformedDataset(Dataset[Sample]):
    """A dataset with a transform applied to each item; reads ``(index, seed)`` keys from :class:`SeededSampler`.

    Attributes of the wrapped dataset (``num_classes``, ``class_names``, ``target_kind``, ...) are passed through.
    """

    def __init__(self, dataset: Any, transform: Transform | None = None, indices: Sequence[int] | None = None):
        self.dataset = dataset
        self.transform = transform
        self.indices = list(indices) if indices is not None else None

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> Sample:
        index, seed = key if isinstance(key, tuple) else (key, None)
        real = self.indices[index] if self.indices is not None else index
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        with random_context(generator):
            sample = self.dataset[real]
            return self.transform(sample) if self.transform is not None else sample

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "transform", "indices"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


class SeededSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, per-sample seed)``, shuffled or in order, from a generator seeded once.

    Each pass (epoch) continues the generator's stream, so orders and augmentations change between epochs but the
    whole run is reproducible from the seed, independently of the number of loader workers.
    """

    def __init__(self, length: int, shuffle: bool = True, seed: int = 0) -> None:
        self.length = length
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(mix_seed(seed, 0x5EED))

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[int, int]]:
        n = self.length
        order = torch.randperm(n, generator=self.generator).tolist() if self.shuffle else list(range(n))
        seeds = torch.randint(0, 2**62, (n,), generator=self.generator).tolist()
        return iter(zip(order, seeds))


def dataset_collate(dataset: Any) -> Callable[[list[Any]], Any]:
    """The collate function a dataset's ``target_kind`` calls for (auto when it has none)."""
    return collate_for(str(getattr(dataset, "target_kind", "auto")))


def make_loader(
    dataset: Any,
    batch_size: int,
    shuffle: bool = True,
    transform: Transform | None = None,
    collate_targets: Callable[[list[Any]], Any] | None = None,
    num_workers: int = 0,
    seed: int = 0,
    indices: Sequence[int] | None = None,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader[Batch]:
    """A DataLoader of :class:`~tdfusion_core.data.Batch` over ``dataset`` (or its ``indices`` subset).

    ``transform`` runs on each sample with a per-sample generator drawn from ``seed``: order and augmentation are
    reproducible, and independent of ``num_workers``. ``collate_targets`` defaults to the dataset's
    ``target_kind`` (masks stacked ``(B, H, W)``, boxes a list of ``(N_i, 5)``); pass ``task.collate_targets``
    for a task's own format.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    wrapped = TransformedDataset(dataset, transform, indices)
    if len(wrapped) == 0:
        raise ValueError("cannot make a loader over an empty dataset")
    collate = collate_targets if collate_targets is not None else dataset_collate(dataset)
    collate_fn = functools.partial(collate_samples, collate_targets=collate)  # picklable for spawned workers
    return DataLoader(
        wrapped,  # type: ignore[arg-type]
        batch_size=batch_size,
        sampler=SeededSampler(len(wrapped), shuffle, seed),
        collate_fn=collate_fn,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(mix_seed(seed, 0x3A7)),
    )


# ---------------------------------------------------------------------------------------------------- meta split
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


class MetaSplitSampler:
    """Per-epoch disjoint meta-train / meta-test index subsets of a dataset of ``n`` items (see :func:`meta_split`).

    ``split(epoch)`` is a pure function of ``(seed, epoch)``: resuming a run at epoch ``e`` draws the same split.
    """

    def __init__(
        self, n: int, seed: int = 0, meta_train_size: int | None = None, meta_test_size: int | None = None
    ) -> None:
        self.n = n
        self.seed = seed
        self.meta_train_size = meta_train_size
        self.meta_test_size = meta_test_size
        self.split(0)  # validate sizes now

    def split(self, epoch: int) -> tuple[list[int], list[int]]:
        """``(meta_train_indices, meta_test_indices)`` of ``epoch``."""
        return meta_split(self.n, epoch, self.seed, self.meta_train_size, self.meta_test_size)

    def __repr__(self) -> str:
        return (
            f"MetaSplitSampler(n={self.n}, seed={self.seed}, meta_train_size={self.meta_train_size}, "
            f"meta_test_size={self.meta_test_size})"
        )
