"""Benchmark of the training data path: one epoch of batches with 0, 2, ... worker processes (``tdfusion bench data``).

For each ``num_workers`` the trainer's :class:`~tdfusion_core.training.batches.Batcher` builds the fusion phase's batches of
one epoch of the dataset (one pass, plans from :class:`~tdfusion_core.data.sampling.StepSampler`) exactly as training
does, on the CPU, without any network. Reported per row (the median over ``repeats``, rows interleaved):

* ``wall_s``: the epoch's wall time;
* ``main_cpu_s``: CPU time of the training process (reading, when there are no workers, and building);
* ``workers_cpu_s``: CPU time of the worker processes (reading);
* with ``--step-ms``, each step also waits that long, as the training process waits for a GPU step: workers then
  read during the wait, and the wall time shows how much of the reading they hide.

The rows also check that every batch equals the first row's, bit for bit.
"""

from __future__ import annotations

import json
import resource
import statistics
import time
from collections.abc import Sequence
from typing import Any

import click
import torch
import torch.nn as nn

from tdfusion_core.apps.bench.machine import cpu_seconds, machine_info
from tdfusion_core.commands.options import (
    batch_size_option,
    json_option,
    key_value_option,
    key_value_options,
    size_callback,
)
from tdfusion_core.kernel.task import Task


class _TargetsOnly(Task):
    """The target operations of a dataset's ``target_kind`` (resized with the images, collated), without a network."""

    def __init__(self, target_kind: str) -> None:
        super().__init__()
        self.target_kind = target_kind  # type: ignore[assignment, misc]

    def build_network(self) -> nn.Module:
        raise NotImplementedError("the data benchmark has no task network")

    def compute_loss(self, network: nn.Module, images: torch.Tensor, targets: Any) -> torch.Tensor:
        raise NotImplementedError("the data benchmark has no task loss")

    def evaluate(self, network: nn.Module, batches: Any) -> dict[str, float]:
        raise NotImplementedError("the data benchmark evaluates nothing")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # worker processes count once they have been joined
    return usage.ru_utime + usage.ru_stime


def _epoch(batcher: Any, dataset: Any, step_s: float) -> tuple[dict[str, float], list[torch.Tensor]]:
    start, cpu, children = time.perf_counter(), cpu_seconds(), _children_cpu()
    tensors: list[torch.Tensor] = []
    for crop, batch in batcher.fusion_phase(dataset, 0):
        tensors += [crop, batch.sources, batch.chroma]
        if step_s:
            time.sleep(step_s)
    return {
        "wall_s": time.perf_counter() - start,
        "main_cpu_s": cpu_seconds() - cpu,
        "workers_cpu_s": _children_cpu() - children,
    }, tensors


def bench_data(
    data: str,
    data_options: dict[str, Any] | None = None,
    split: str = "train",
    workers: Sequence[int] = (0, 2),
    batch_size: int = 1,
    crop_size: tuple[int, int] = (256, 256),
    task_size: tuple[int, int] | None = None,
    step_ms: float = 0.0,
    repeats: int = 3,
) -> dict[str, Any]:
    """Time one epoch of batches for each worker count; returns one JSON-ready dict (see the module doc)."""
    from tdfusion_core.data.sampling import ShardedBatches, StepSampler
    from tdfusion_core.plugin.registry import resolve_dataset
    from tdfusion_core.training.batches import Batcher

    dataset = resolve_dataset(data, split=split, **(data_options or {}))
    size = task_size or getattr(dataset, "task_size", None) or dataset[0].size
    task = _TargetsOnly(str(getattr(dataset, "target_kind", "none")))
    sampler = StepSampler(batch_size, shards=ShardedBatches(batch_size, switch=True))
    runs: dict[int, list[dict[str, float]]] = {w: [] for w in workers}
    reference: list[torch.Tensor] | None = None
    identical = True
    for _ in range(repeats):
        for w in workers:
            batcher = Batcher(task, tuple(size), crop_size, True, "cpu", sampler, num_workers=w)
            figures, tensors = _epoch(batcher, dataset, step_ms / 1000.0)
            runs[w].append(figures)
            if reference is None:
                reference = tensors
            identical &= len(tensors) == len(reference) and all(map(torch.equal, tensors, reference))
    rows = [
        {
            "num_workers": w,
            **{
                k: round(statistics.median(r[k] for r in runs[w]), 3) for k in ("wall_s", "main_cpu_s", "workers_cpu_s")
            },
        }
        for w in workers
    ]
    return {
        "benchmark": "data",
        "data": data,
        "split": split,
        "samples": len(dataset),
        "image_size": list(dataset[0].size),
        "task_size": list(size),
        "crop_size": list(crop_size),
        "batch_size": batch_size,
        "steps": len(sampler.fusion_steps(len(dataset), 0)),
        "step_ms": step_ms,
        "repeats": repeats,
        "batches_identical": identical,
        "rows": rows,
        "machine": machine_info("cpu"),
    }


def format_data_results(result: dict[str, Any]) -> str:
    """A small table of :func:`bench_data`'s rows."""
    lines = [
        f"{result['data']} ({result['split']}): {result['samples']} samples of {result['image_size']}, "
        f"{result['steps']} steps, step wait {result['step_ms']} ms, median of {result['repeats']}; "
        f"batches identical: {result['batches_identical']}",
        f"{'num_workers':>11} {'wall s':>8} {'main CPU s':>11} {'workers CPU s':>14}",
    ]
    for r in result["rows"]:
        lines.append(f"{r['num_workers']:>11} {r['wall_s']:>8.2f} {r['main_cpu_s']:>11.2f} {r['workers_cpu_s']:>14.2f}")
    return "\n".join(lines)


@click.command(name="data")
@click.option("--data", required=True, help="Registered dataset (llvip, msrs, ...) or a folder.")
@key_value_option(
    "--data-option",
    "data_sets",
    help="Dataset option, repeatable (e.g. root=../shared/data/LLVIP).",
)
@click.option("--split", default="train", show_default=True)
@click.option("--workers", default="0,2", show_default=True, help="Comma-separated num_workers values to compare.")
@batch_size_option(1)
@click.option(
    "--crop-size", default="256x256", show_default=True, callback=size_callback(), help="Fusion-loss crop HEIGHTxWIDTH."
)
@click.option(
    "--task-size", default=None, callback=size_callback(), help="Task size HEIGHTxWIDTH (default: the dataset's)."
)
@click.option("--step-ms", type=click.FloatRange(min=0), default=0.0, show_default=True, help="Wait per step.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
@json_option()
# One parameter per option: alike in shape only to the other bench commands' signatures.
def data_command(
    data: str,
    data_sets: tuple[str, ...],
    split: str,
    workers: str,
    batch_size: int,
    crop_size: tuple[int, int],
    task_size: tuple[int, int] | None,
    step_ms: float,
    repeats: int,
    as_json: bool,
) -> None:
    """Time one epoch of training batches read with 0, 2, ... worker processes."""
    try:
        counts = [int(w) for w in workers.split(",") if w.strip()]
    except ValueError:
        raise click.BadParameter(
            f"{workers!r}: give comma-separated integers, e.g. 0,2,4", param_hint="--workers"
        ) from None
    if not counts or min(counts) < 0:
        raise click.BadParameter(f"{workers!r}: give worker counts of 0 or more", param_hint="--workers")
    result = bench_data(
        data,
        key_value_options(data_sets, "--data-option"),
        split,
        counts,
        batch_size,
        crop_size,
        task_size,
        step_ms,
        repeats,
    )
    click.echo(json.dumps(result) if as_json else format_data_results(result))
