"""Benchmark of the training loop: milliseconds per meta step pair (inner + outer), per fusion step, peak memory.

Uses the released code's sizes by default: fusion-loss crops 256x256, one pair per batch plus its Switch (batch 2),
task input 240x320 for segmentation (MSRS) and 192x256 for detection (M3FD), sources of 480x640. The steps timed
are exactly the trainer's (:meth:`MetaTrainer.meta_update`, :meth:`MetaTrainer.fusion_update`) on batches prepared
beforehand, so data loading is not included. Several ``modes`` run side by side on the same networks and sizes.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import click
import torch

from tdfusion_core.apps.bench.machine import cpu_seconds, load_average, machine_info, torch_threads
from tdfusion_core.commands.options import (
    default_allocator_option,
    device_option,
    json_option,
    key_value_option,
    key_value_options,
    size_callback,
    threads_option,
)
from tdfusion_core.common.devices import pick_device
from tdfusion_core.common.speed import keep_freed_memory
from tdfusion_core.data.sample import Sample
from tdfusion_core.kernel.meta import MetaMode
from tdfusion_core.training.config import TrainConfig

DEFAULT_TASK_SIZES = {"mask": (240, 320), "boxes": (192, 256)}


class RandomScenes(torch.utils.data.Dataset):
    """Random two-source scenes with random masks or boxes, for timing only."""

    def __init__(self, n: int, size: tuple[int, int], target_kind: str, num_classes: int, seed: int = 0) -> None:
        self.n, self.size, self.kind, self.num_classes, self.seed = n, size, target_kind, num_classes, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Sample:
        g = torch.Generator().manual_seed(self.seed + i)
        h, w = self.size
        sources = torch.rand(2, h, w, generator=g)
        chroma = 0.5 + 0.1 * (torch.rand(2, 2, h, w, generator=g) - 0.5)
        target: Any = None
        if self.kind == "mask":
            target = torch.randint(0, self.num_classes, (h, w), generator=g)
        elif self.kind == "boxes":
            xy = torch.rand(4, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
            wh = 16 + torch.rand(4, 2, generator=g) * torch.tensor([w * 0.25, h * 0.25])
            cls = torch.randint(0, self.num_classes, (4, 1), generator=g).float()
            target = torch.cat([cls, xy, xy + wh], dim=1)
        return Sample(sources, chroma, target, f"random{i}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB elsewhere


def _timed(fn: Any, device: torch.device) -> tuple[float, float]:
    """Wall and CPU milliseconds of one call."""
    _sync(device)
    c0, t0 = cpu_seconds(), time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - t0) * 1000.0, (cpu_seconds() - c0) * 1000.0


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def _bench_modes(trainers: dict[str, Any], dev: torch.device, iters: int, warmup: int) -> dict[str, Any]:
    """Time every trainer's meta step pair and fusion step, interleaved round by round (same load for all)."""
    batches = {}
    for mode, trainer in trainers.items():
        data = trainer.train_set
        gen = torch.Generator().manual_seed(0)
        crop, mtr = trainer.batcher.whole([data[0]], gen)
        _, mts = trainer.batcher.whole([data[1]], gen)
        batches[mode] = (crop, mtr, mts)
    times: dict[str, dict[str, list[float]]] = {m: {k: [] for k in ("mw", "mc", "fw", "fc")} for m in trainers}
    peaks: dict[str, float] = {}
    for step in range(warmup + iters):
        for mode, trainer in trainers.items():
            crop, mtr, mts = batches[mode]
            if dev.type == "cuda" and step == warmup:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(dev)
            mw, mc = _timed(lambda t=trainer, c=crop, a=mtr, b=mts: t.meta_update(c, a, b), dev)
            fw, fc = _timed(lambda t=trainer, c=crop, a=mtr: t.fusion_update(c, a), dev)
            if step >= warmup:
                for key, value in zip(("mw", "mc", "fw", "fc"), (mw, mc, fw, fc), strict=True):
                    times[mode][key].append(value)
                peaks[mode] = max(peaks.get(mode, 0.0), _peak_mb(dev))
    kind = "torch.cuda.max_memory_allocated" if dev.type == "cuda" else "process max RSS (cumulative)"
    return {
        mode: {
            "meta_pair_ms": _median(t["mw"]),
            "meta_pair_cpu_ms": _median(t["mc"]),
            "fusion_step_ms": _median(t["fw"]),
            "fusion_step_cpu_ms": _median(t["fc"]),
            "peak_memory_mb": round(peaks.get(mode, _peak_mb(dev)), 1),
            "peak_memory_kind": kind,
        }
        for mode, t in times.items()
    }


def bench_meta(
    task: str = "tiny-seg",
    device: str = "cpu",
    modes: Sequence[MetaMode] = ("jvp",),
    amp: bool = False,
    iters: int = 5,
    warmup: int = 2,
    image_size: tuple[int, int] = (480, 640),
    crop_size: tuple[int, int] = (256, 256),
    task_size: tuple[int, int] | None = None,
    task_options: dict[str, Any] | None = None,
    fusion_net: str = "refusion",
    loss_generator: str = "lpn",
    num_classes: int = 9,
    threads: int | None = None,
    train_options: dict[str, Any] | None = None,
    keep_memory: bool = True,
) -> dict[str, Any]:
    """Time the meta step pair and the fusion step for each mode, interleaved; returns one JSON-ready dict.

    ``task_options`` go to the task's factory (e.g. ``{"input_kind": "luminance"}``), ``train_options`` to
    :class:`~tdfusion_core.training.config.TrainConfig` (e.g. ``{"task_step": "sgd"}``); ``threads`` sets torch's CPU threads
    for the run; ``keep_memory`` applies :func:`tdfusion_core.common.speed.keep_freed_memory` first (process-wide).
    Medians over ``iters`` rounds after ``warmup``; each round runs every mode's meta pair then fusion step.
    """
    from tdfusion_core.plugin.registry import get_task
    from tdfusion_core.training.trainer import MetaTrainer

    dev = pick_device(device)
    if keep_memory:
        keep_freed_memory()
    with torch_threads(threads):
        options = {"num_classes": num_classes, **(task_options or {})}
        task_obj = get_task(task, **options)
        size = task_size or DEFAULT_TASK_SIZES.get(task_obj.target_kind) or task_obj.default_input_size or (240, 320)
        data = RandomScenes(4, image_size, task_obj.target_kind, num_classes)
        results: dict[str, Any] = {
            "task": task,
            "task_options": options,
            "train_options": dict(train_options or {}),
            "device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
            "amp": amp,
            "image_size": list(image_size),
            "crop_size": list(crop_size),
            "task_size": list(size),
            "batch": "1 pair + Switch (2)",
            "iters": iters,
            "threads": torch.get_num_threads(),
            "keep_freed_memory": keep_memory,
            "machine": machine_info(dev),
        }
        trainers: dict[str, Any] = {}
        for mode in modes:
            torch.manual_seed(0)
            config = TrainConfig(
                **{
                    "task": task,
                    "fusion_net": fusion_net,
                    "loss_generator": loss_generator,
                    "meta_mode": mode,
                    "device": device,
                    "amp": amp,
                    "crop_size": crop_size,
                    "task_size": size,
                    "progress": False,
                    "log_images": False,
                    **(train_options or {}),
                }
            )
            trainers[mode] = MetaTrainer(config, task=get_task(task, **options), train_set=data)
        results["modes"] = _bench_modes(trainers, dev, iters, warmup)
        results["machine"]["load_average_end"] = load_average()
    if "jvp" in results["modes"] and "double-backward" in results["modes"]:
        results["jvp_speedup_over_double_backward"] = round(
            results["modes"]["double-backward"]["meta_pair_ms"] / results["modes"]["jvp"]["meta_pair_ms"], 2
        )
    return results


def format_meta_results(results: dict[str, Any]) -> str:
    """Human-readable table of :func:`bench_meta` results."""
    lines = [
        f"task {results['task']} on {results['device']} (amp={results['amp']}), sources {results['image_size']}, "
        f"crop {results['crop_size']}, task input {results['task_size']}, batch {results['batch']}, "
        f"{results['threads']} thread(s), load average {results['machine']['load_average']} (medians of "
        f"{results['iters']} interleaved rounds)",
        f"{'mode':<20}{'meta pair ms':>14}{'(CPU ms)':>10}{'fusion step ms':>16}{'(CPU ms)':>10}{'peak MB':>10}",
    ]
    for mode, r in results["modes"].items():
        lines.append(
            f"{mode:<20}{r['meta_pair_ms']:>14.1f}{r['meta_pair_cpu_ms']:>10.1f}{r['fusion_step_ms']:>16.1f}"
            f"{r['fusion_step_cpu_ms']:>10.1f}{r['peak_memory_mb']:>10.0f}"
        )
    if "jvp_speedup_over_double_backward" in results:
        lines.append(f"jvp is {results['jvp_speedup_over_double_backward']:.2f}x faster than double-backward")
    return "\n".join(lines)


@click.command(name="meta")
@click.option("--task", default="tiny-seg", show_default=True, help="Registered task (e.g. segformer, yolo).")
@device_option(help="auto (CUDA, then MPS, else CPU), cpu, cuda:1 ...")
@click.option(
    "--mode",
    "modes",
    multiple=True,
    type=click.Choice(["jvp", "double-backward", "finite-difference"]),
    help="Meta-gradient mode(s), repeatable; default: jvp and double-backward side by side.",
)
@click.option("--amp", is_flag=True, help="bfloat16 autocast for forward passes.")
@click.option("--iters", type=click.IntRange(min=1), default=5, show_default=True, help="Timed steps.")
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True, help="Untimed steps first.")
@click.option(
    "--image-size", default="480x640", show_default=True, callback=size_callback(), help="Source size HEIGHTxWIDTH."
)
@click.option(
    "--crop-size", default="256x256", show_default=True, callback=size_callback(), help="Fusion-loss crop HEIGHTxWIDTH."
)
@click.option(
    "--task-size",
    default=None,
    callback=size_callback(),
    help="Task input HEIGHTxWIDTH (default 240x320 masks, 192x256 boxes).",
)
@click.option("--num-classes", type=click.IntRange(min=1), default=9, show_default=True)
@threads_option()
@key_value_option(
    "--set",
    "task_sets",
    help="Task option, repeatable (e.g. --set input_kind=luminance); VALUE is read as YAML (numbers, true, text).",
)
@key_value_option(
    "--train-set",
    "train_sets",
    help="Training-config field, repeatable (e.g. --train-set task_step=sgd).",
)
@default_allocator_option()
@json_option()
def meta_command(
    task: str,
    device: str,
    modes: tuple[str, ...],
    amp: bool,
    iters: int,
    warmup: int,
    image_size: tuple[int, int],
    crop_size: tuple[int, int],
    task_size: tuple[int, int] | None,
    num_classes: int,
    threads: int | None,
    task_sets: tuple[str, ...],
    train_sets: tuple[str, ...],
    default_allocator: bool,
    as_json: bool,
) -> None:
    """Time the meta step pair (inner + outer), the fusion step and peak memory at the released code's sizes."""
    # Each option passed on by name: alike in shape only to the other commands' calls of their functions.
    results = bench_meta(
        task=task,
        device=device,
        modes=modes or ("jvp", "double-backward"),  # type: ignore[arg-type]
        amp=amp,
        iters=iters,
        warmup=warmup,
        image_size=image_size,
        crop_size=crop_size,
        task_size=task_size,
        num_classes=num_classes,
        threads=threads,
        task_options=key_value_options(task_sets, "--set"),
        train_options=key_value_options(train_sets, "--train-set"),
        keep_memory=not default_allocator,
    )
    click.echo(json.dumps(results) if as_json else format_meta_results(results))
