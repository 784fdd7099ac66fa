"""Downstream protocol (the paper's Table 2): train a fresh task network on the images of each fusion method.

For every *method* — a folder of fused images, or one source of the dataset alone ("IR only", "VIS only") — the
same registered task is trained from the same random initialisation, on the same samples in the same order, for the
same budget (optimizer steps), then evaluated on a validation set with :meth:`tdfusion_core.kernel.task.Task.evaluate`. The
only thing that changes between methods is the image the task sees, so the task metrics compare the fusion methods.

* **Labels** come from the dataset (any registered dataset or folder, see
  :func:`tdfusion_core.training.trainer.resolve_dataset`); the fused image of a sample is the file in the method's folder with
  the sample's name (stem), which must have the sample's size (an error names the file otherwise).
* **Task input**: fused images are read with :func:`tdfusion_core.common.io.read_image`; a task with
  ``input_kind="luminance"`` gets the luminance, one with ``"rgb"`` the image's own colours (gray replicated for a
  gray image). A single source is used likewise with its own chroma.
* **Size**: images and targets are resized to ``size`` (else the dataset's ``task_size``, else the task's
  ``default_input_size``, else the first sample's size), as the trainer does for the task loss.
* **Validation**: a separate split (``val_split``) or a seeded fraction of the training set held out
  (``val_fraction``), identical for every method.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from tdfusion_core.apps.evaluate import DatasetResult
from tdfusion_core.common.colour import task_input
from tdfusion_core.common.devices import pick_device
from tdfusion_core.common.io import list_images, read_image
from tdfusion_core.data.sample import Sample
from tdfusion_core.training.batches import resize_images

__all__ = ["DownstreamError", "DownstreamMethod", "DownstreamResult", "run_downstream", "source_index"]

#: Source names understood by ``--source`` (the dataset convention: source 0 infrared, source 1 visible).
SOURCE_ALIASES = {"ir": 0, "infrared": 0, "vis": 1, "vi": 1, "visible": 1}


class DownstreamError(ValueError):
    """A method's images do not fit the dataset (missing names, other sizes), or training diverged."""


def source_index(value: str | int) -> int:
    """``"ir"`` -> 0, ``"vis"`` -> 1, ``"3"`` -> 3."""
    if isinstance(value, int):
        return value
    key = value.strip().lower()
    if key in SOURCE_ALIASES:
        return SOURCE_ALIASES[key]
    if key.isdigit():
        return int(key)
    raise ValueError(f"unknown source {value!r}: use ir, vis or a source index")


@attrs.define
class DownstreamMethod:
    """The images of one method: a folder of fused images (``fused_dir``) or one source of the dataset (``source``)."""

    name: str
    fused_dir: Path | None = None
    source: int | None = None

    def __attrs_post_init__(self) -> None:
        if (self.fused_dir is None) == (self.source is None):
            raise ValueError(f"method {self.name!r}: give exactly one of fused_dir and source")


@attrs.define
class DownstreamResult:
    """Task metrics per method (:attr:`table`, ready for the reports of :mod:`tdfusion_core.apps.evaluate`) and run facts."""

    table: DatasetResult
    task: str
    steps: int
    batch_size: int
    size: tuple[int, int]
    seed: int
    train_images: int
    final_loss: dict[str, float] = attrs.field(factory=dict)
    seconds: dict[str, float] = attrs.field(factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "size": list(self.size),
            "seed": self.seed,
            "train_images": self.train_images,
            "val_images": len(self.table.images),
            "final_train_loss": self.final_loss,
            "seconds": self.seconds,
        }


class _MethodImages:
    """Index access to a dataset's samples with their sources replaced by a method's image (K = 1)."""

    def __init__(self, base: Any, indices: Sequence[int], method: DownstreamMethod) -> None:
        self.base, self.indices, self.method = base, list(indices), method
        self.files: dict[str, Path] = list_images(method.fused_dir) if method.fused_dir is not None else {}
        names = getattr(base, "names", None)
        if method.fused_dir is not None and names is not None:
            wanted = {names[i] for i in self.indices}
            missing = sorted(wanted - set(self.files))
            if missing:
                shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
                raise DownstreamError(
                    f"method {method.name!r}: {len(missing)} sample(s) have no image in {method.fused_dir}: {shown}"
                )

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Sample:
        s: Sample = self.base[self.indices[i]]
        if self.method.source is not None:
            k = self.method.source
            if not 0 <= k < s.sources.shape[0]:
                raise DownstreamError(
                    f"method {self.method.name!r}: source {k} of a {s.sources.shape[0]}-source sample"
                )
            return Sample(s.sources[k : k + 1], s.chroma[k : k + 1], s.target, s.name)
        path = self.files.get(s.name)
        if path is None:
            raise DownstreamError(f"method {self.method.name!r}: no image named {s.name!r} in {self.method.fused_dir}")
        y, chroma = read_image(path)
        if tuple(y.shape[-2:]) != s.size:
            raise DownstreamError(
                f"{path} is {y.shape[-2]}x{y.shape[-1]} but sample {s.name!r} of the dataset is {s.size[0]}x{s.size[1]}"
            )
        return Sample(y, chroma[None], s.target, s.name)


def _batches(
    task: Any, data: _MethodImages, order: Sequence[int], batch_size: int, size: tuple[int, int], device: torch.device
) -> Iterator[tuple[torch.Tensor, Any]]:
    """``(images, targets)`` batches in ``order``: resized, turned into the task's input, on ``device``."""
    for start in range(0, len(order), batch_size):
        samples = [data[i] for i in order[start : start + batch_size]]
        y = torch.stack([resize_images(s.sources, size) for s in samples]).to(device)
        chroma = torch.stack([resize_images(s.chroma, size) for s in samples]).to(device)
        images = task_input(y, chroma, task.input_kind)
        targets = [task.resize_targets(s.target, s.size, size) for s in samples]
        yield images, task.targets_to(task.collate_targets(targets), device)


def _step_order(n: int, steps: int, batch_size: int, seed: int) -> list[list[int]]:
    """Index batches for ``steps`` optimizer steps: seeded reshuffles of ``range(n)``, one per pass."""
    gen = torch.Generator().manual_seed(seed)
    out: list[list[int]] = []
    pool: list[int] = []
    while len(out) < steps:
        if len(pool) < batch_size:
            pool += torch.randperm(n, generator=gen).tolist()
        out.append(pool[:batch_size])
        pool = pool[batch_size:]
    return out


def run_downstream(
    task: str,
    train_set: Any,
    methods: Sequence[DownstreamMethod],
    val_set: Any | None = None,
    val_fraction: float = 0.25,
    steps: int = 200,
    batch_size: int = 2,
    size: tuple[int, int] | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    task_options: Mapping[str, Any] | None = None,
    dataset_name: str = "dataset",
    progress: Callable[[str], None] | None = None,
) -> DownstreamResult:
    """Train and evaluate a fresh ``task`` network per method (see the module docstring).

    Args:
        task: registered task name.
        train_set: dataset of :class:`~tdfusion_core.data.Sample` with targets (labels of the task's kind).
        methods: the images to compare.
        val_set: validation dataset; ``None`` holds out ``val_fraction`` of ``train_set`` (seeded).
        steps: optimizer steps per method (the budget).
        batch_size: samples per step.
        size: ``(H, W)`` the task sees.
        seed: seeds the network initialisation, the sample order and the hold-out split (the same for all methods).
        task_options: keyword configuration of the task (``num_classes`` defaults to the dataset's).
        progress: called with a short message now and then.
    """
    from tdfusion_core.data.sampling import seed_everything
    from tdfusion_core.plugin import registry

    if not methods:
        raise ValueError("no method to evaluate")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names repeat: {names}")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got {steps} and {batch_size}")
    dev = pick_device(device)
    n = len(train_set)
    if val_set is None:
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1)).tolist()
        n_val = max(1, round(n * val_fraction))
        if n - n_val < 1:
            raise ValueError(f"{n} sample(s) are too few to hold out a validation set")
        val_base, val_idx, train_idx = train_set, sorted(perm[:n_val]), sorted(perm[n_val:])
    else:
        val_base, val_idx, train_idx = val_set, list(range(len(val_set))), list(range(n))
    options = dict(task_options or {})
    if getattr(train_set, "num_classes", None) is not None:
        options.setdefault("num_classes", train_set.num_classes)
    probe = registry.get_task(task, **options)
    if size is None:
        size = getattr(train_set, "task_size", None) or probe.default_input_size or train_set[train_idx[0]].size
    size = (int(size[0]), int(size[1]))
    order = _step_order(len(train_idx), steps, batch_size, seed)
    base_names = getattr(val_base, "names", None)
    val_names = [str(base_names[i]) if base_names is not None else str(i) for i in val_idx]
    table = DatasetResult(name=dataset_name, metrics=[], images=val_names)
    result = DownstreamResult(
        table=table, task=task, steps=steps, batch_size=batch_size, size=size, seed=seed, train_images=len(train_idx)
    )
    for method in methods:
        start = time.perf_counter()
        train_data = _MethodImages(train_set, train_idx, method)
        val_data = _MethodImages(val_base, val_idx, method)
        seed_everything(seed)  # the same initial weights for every method
        t = registry.get_task(task, **options)
        net = t.network.to(dev)
        net.train()
        opt = t.make_optimizer(net.parameters())
        loss_value = math.nan
        for step, idx in enumerate(order):
            images, targets = next(_batches(t, train_data, idx, batch_size, size, dev))
            loss = t.compute_loss(net, images, targets)
            if not torch.isfinite(loss):
                raise DownstreamError(f"method {method.name!r}: non-finite task loss at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_value = float(loss.detach())
            if progress is not None and (step + 1) % max(1, steps // 5) == 0:
                progress(f"{method.name}: step {step + 1}/{steps}, task loss {loss_value:.4f}")
        metrics = t.evaluate(net, _batches(t, val_data, list(range(len(val_data))), batch_size, size, dev))
        table.means[method.name] = {k: float(v) for k, v in metrics.items()}
        result.final_loss[method.name] = loss_value
        result.seconds[method.name] = time.perf_counter() - start
        if progress is not None:
            summary = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if "." not in k)
            progress(f"{method.name}: {summary}")
    # table columns: the summary metrics (per-class values, named "<metric>.<class>", stay in the JSON)
    first = next(iter(table.means.values()))
    table.metrics = [k for k in first if "." not in k] or list(first)
    return result
