"""Benchmark of the training loop: milliseconds per meta step pair (inner + outer), per fusion step, peak memory.

Uses the released code's sizes by default: fusion-loss crops 256x256, one pair per batch plus its Switch (batch 2),
task input 240x320 for segmentation (MSRS) and 192x256 for detection (M3FD), sources of 480x640. The steps timed
are exactly the trainer's (:meth:`MetaTrainer.meta_update`, :meth:`MetaTrainer.fusion_update`) on batches prepared
beforehand, so data loading is not included. Several ``modes`` run side by side on the same networks and sizes.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Sequence
from typing import Any

import click
import torch

from tdfusion_core.config import TrainConfig
from tdfusion_core.data.sample import Sample
from tdfusion_core.devices import pick_device
from tdfusion_core.meta import MetaMode

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


def _time(fn: Any, device: torch.device, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters * 1000.0


def _bench_mode(trainer: Any, dev: torch.device, iters: int, warmup: int) -> dict[str, Any]:
    data = trainer.train_set
    gen = torch.Generator().manual_seed(0)
    crop, mtr = trainer._prepare([data[0]], gen)
    _, mts = trainer._prepare([data[1]], gen)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    meta_ms = _time(lambda: trainer.meta_update(crop, mtr, mts), dev, iters, warmup)
    meta_peak = _peak_mb(dev)
    fusion_ms = _time(lambda: trainer.fusion_update(crop, mtr), dev, iters, warmup)
    return {
        "meta_pair_ms": round(meta_ms, 2),
        "fusion_step_ms": round(fusion_ms, 2),
        "peak_memory_mb": round(max(meta_peak, _peak_mb(dev)), 1),
        "peak_memory_kind": "torch.cuda.max_memory_allocated" if dev.type == "cuda" else "process max RSS (cumulative)",
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
) -> dict[str, Any]:
    """Time the meta step pair and the fusion step for each mode; returns one JSON-ready dict."""
    from tdfusion_core.registry import get_task
    from tdfusion_core.trainer import MetaTrainer

    dev = pick_device(device)
    options = {"num_classes": num_classes, **(task_options or {})}
    task_obj = get_task(task, **options)
    size = task_size or DEFAULT_TASK_SIZES.get(task_obj.target_kind) or task_obj.default_input_size or (240, 320)
    data = RandomScenes(4, image_size, task_obj.target_kind, num_classes)
    results: dict[str, Any] = {
        "task": task,
        "device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
        "amp": amp,
        "image_size": list(image_size),
        "crop_size": list(crop_size),
        "task_size": list(size),
        "batch": "1 pair + Switch (2)",
        "iters": iters,
        "modes": {},
    }
    for mode in modes:
        torch.manual_seed(0)
        config = TrainConfig(
            task=task,
            fusion_net=fusion_net,
            loss_generator=loss_generator,
            meta_mode=mode,
            device=device,
            amp=amp,
            crop_size=crop_size,
            task_size=size,
            progress=False,
            log_images=False,
        )
        results["modes"][mode] = _bench_mode(
            MetaTrainer(config, task=get_task(task, **options), train_set=data), dev, iters, warmup
        )
    if "jvp" in results["modes"] and "double-backward" in results["modes"]:
        results["jvp_speedup_over_double_backward"] = round(
            results["modes"]["double-backward"]["meta_pair_ms"] / results["modes"]["jvp"]["meta_pair_ms"], 2
        )
    return results


def format_meta_results(results: dict[str, Any]) -> str:
    """Human-readable table of :func:`bench_meta` results."""
    lines = [
        f"task {results['task']} on {results['device']} (amp={results['amp']}), sources {results['image_size']}, "
        f"crop {results['crop_size']}, task input {results['task_size']}, batch {results['batch']}",
        f"{'mode':<20}{'meta pair ms':>14}{'fusion step ms':>16}{'peak MB':>10}",
    ]
    for mode, r in results["modes"].items():
        lines.append(f"{mode:<20}{r['meta_pair_ms']:>14.1f}{r['fusion_step_ms']:>16.1f}{r['peak_memory_mb']:>10.0f}")
    if "jvp_speedup_over_double_backward" in results:
        lines.append(f"jvp is {results['jvp_speedup_over_double_backward']:.2f}x faster than double-backward")
    return "\n".join(lines)


def _size_option(value: str) -> tuple[int, int]:
    parts = value.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise click.BadParameter(f"expected HEIGHTxWIDTH, got {value!r}")
    return int(parts[0]), int(parts[1])


@click.command(name="meta")
@click.option("--task", default="tiny-seg", show_default=True, help="Registered task (e.g. segformer, yolo).")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA, then MPS, else CPU), cpu, cuda:1 ...")
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
@click.option("--image-size", default="480x640", show_default=True, help="Source size HEIGHTxWIDTH.")
@click.option("--crop-size", default="256x256", show_default=True, help="Fusion-loss crop HEIGHTxWIDTH.")
@click.option("--task-size", default=None, help="Task input HEIGHTxWIDTH (default 240x320 masks, 192x256 boxes).")
@click.option("--num-classes", type=click.IntRange(min=1), default=9, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def meta_command(
    task: str,
    device: str,
    modes: tuple[str, ...],
    amp: bool,
    iters: int,
    warmup: int,
    image_size: str,
    crop_size: str,
    task_size: str | None,
    num_classes: int,
    as_json: bool,
) -> None:
    """Time the meta step pair (inner + outer), the fusion step and peak memory at the released code's sizes."""
    results = bench_meta(
        task=task,
        device=device,
        modes=modes or ("jvp", "double-backward"),  # type: ignore[arg-type]
        amp=amp,
        iters=iters,
        warmup=warmup,
        image_size=_size_option(image_size),
        crop_size=_size_option(crop_size),
        task_size=_size_option(task_size) if task_size else None,
        num_classes=num_classes,
    )
    click.echo(json.dumps(results) if as_json else format_meta_results(results))
