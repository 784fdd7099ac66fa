"""Inference benchmark of a fusion network (``tdfusion bench fuse``).

Times the forward pass of the fusion network on random ``(B, 2, H, W)`` sources in one *configuration*: ReFusion's
fast exact pass (:mod:`tdfusion_core.nets.refusion_fast`, what ``tdfusion fuse`` runs by default) or the network
module as it is (``eager``), a precision (``fp32``, ``bf16``, ``fp16``; autocast for the eager module),
``torch.compile``, channels-last memory (eager module), row strips (fast pass), batch size. It reports the median
milliseconds per image (wall) and the CPU time per image (user + system of the process: on a machine that other jobs
share, the steadier figure), images per second, peak memory (CUDA: ``torch.cuda.max_memory_allocated`` during the
timed calls; CPU: the peak resident set size of the whole process, which includes everything loaded before), and the
largest absolute difference to the fp32 eager output of the same network on the same input.

``compare`` times a second configuration on the same network and input, interleaved call by call with the first
(A, B, A, B, ...), so that both see the same machine load; the result holds both and the speed-up of the first.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from tdfusion_core.apps.bench.machine import cpu_seconds, device_name, machine_info, torch_threads
from tdfusion_core.common.devices import pick_device
from tdfusion_core.common.precision import autocast, autocast_dtype
from tdfusion_core.common.sizes import parse_size  # noqa: F401  (re-exported: ``bench.fuse.parse_size`` was public)
from tdfusion_core.common.speed import keep_freed_memory
from tdfusion_core.nets.refusion_fast import PRECISIONS, FastFusion


@attrs.frozen
class FuseConfig:
    """One way of running the fusion network; :meth:`parse` reads ``"fast,bf16,strips=32"``-style text."""

    fast: bool = True
    precision: str = "fp32"
    compile: bool = False
    channels_last: bool = False
    strip_rows: int | None = None

    @classmethod
    def parse(cls, text: str) -> FuseConfig:
        """Comma-separated words: ``fast``/``eager``, ``fp32``/``bf16``/``fp16``, ``compile``, ``channels-last``,
        ``strips=N``; unnamed settings keep their defaults (fast, fp32)."""
        values: dict[str, Any] = {}
        for word in filter(None, (w.strip().lower() for w in text.split(","))):
            if word in ("fast", "eager"):
                values["fast"] = word == "fast"
            elif word in PRECISIONS:
                values["precision"] = word
            elif word == "compile":
                values["compile"] = True
            elif word in ("channels-last", "channels_last"):
                values["channels_last"] = True
            elif word.startswith("strips=") and word[7:].isdigit() and int(word[7:]) > 0:
                values["strip_rows"] = int(word[7:])
            else:
                raise ValueError(
                    f"unknown configuration word {word!r} in {text!r}; use fast, eager, fp32, bf16, fp16, compile, "
                    "channels-last, strips=N"
                )
        return cls(**values)

    def label(self) -> str:
        words = ["fast" if self.fast else "eager", self.precision]
        words += ["compile"] * self.compile + ["channels-last"] * self.channels_last
        return ",".join(words + ([f"strips={self.strip_rows}"] if self.strip_rows else []))


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    import platform

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if platform.system() == "Darwin" else peak / 1024  # Linux: KiB, macOS: bytes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _build(arch: str, checkpoint: str | Path | None) -> nn.Module:
    if checkpoint is not None:
        from tdfusion_core.training.checkpoints import load_model_checkpoint

        return load_model_checkpoint(checkpoint).fusion_net
    from tdfusion_core.plugin.registry import get_fusion_net

    return get_fusion_net(arch, num_sources=2)


def _runner(net: nn.Module, x: torch.Tensor, config: FuseConfig, dev: torch.device) -> Any:
    """A no-argument callable running ``config`` on ``x`` (float32 output)."""
    if config.fast and isinstance(getattr(net, "FM", None), nn.Module):
        fast = FastFusion(net, config.precision, strip_rows=config.strip_rows, compile=config.compile)  # type: ignore[arg-type]
        return lambda: fast(x)
    model: Any = net
    inp = x
    if config.channels_last:
        model = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        inp = x.contiguous(memory_format=torch.channels_last)
    if config.compile:
        model = torch.compile(model)
    dtype = autocast_dtype(config.precision)

    def call() -> torch.Tensor:
        with torch.inference_mode(), autocast(dev, dtype):
            out: torch.Tensor = model(inp)
        return out.float()

    return call


def _time_calls(runners: list[Any], dev: torch.device, iters: int, warmup: int) -> list[dict[str, Any]]:
    """Warm up and time each runner ``iters`` times, interleaved; per runner: first call, wall and CPU times, output."""
    stats: list[dict[str, Any]] = []
    for run in runners:
        t0 = time.perf_counter()
        run()
        _sync(dev)
        stats.append({"first_call_s": time.perf_counter() - t0, "wall": [], "cpu": [], "out": None})
    for _ in range(max(warmup - 1, 0)):
        for run in runners:
            run()
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for _ in range(iters):
        for run, s in zip(runners, stats, strict=True):
            c0, t0 = cpu_seconds(), time.perf_counter()
            s["out"] = run()
            _sync(dev)
            s["wall"].append(time.perf_counter() - t0)
            s["cpu"].append(cpu_seconds() - c0)
    return stats


def bench_fuse(
    size: tuple[int, int] = (480, 640),
    device: str | torch.device = "cpu",
    compile: bool = False,
    channels_last: bool = False,
    batch_size: int = 1,
    iters: int = 10,
    warmup: int = 2,
    arch: str = "refusion",
    checkpoint: str | Path | None = None,
    seed: int = 0,
    threads: int | None = None,
    fast: bool = True,
    precision: str = "fp32",
    strip_rows: int | None = None,
    compare: str | FuseConfig | None = None,
    keep_memory: bool = True,
) -> dict[str, Any]:
    """Benchmark the fusion network's forward pass and return the figures as a JSON-ready dict.

    Args:
        size: ``(height, width)`` of each image.
        device: ``"cpu"``, ``"cuda"``, ...
        compile: ``torch.compile`` (compilation happens in the first call, reported as ``first_call_s``).
        channels_last: the eager module and its input in channels-last memory format.
        batch_size: images per forward pass.
        iters: timed forward passes (per configuration).
        warmup: untimed forward passes before timing (at least 1).
        arch: registered fusion architecture, built with random weights (ignored when ``checkpoint`` is given).
        checkpoint: a checkpoint to load the network from instead.
        seed: seed of the random weights and input.
        threads: CPU threads for torch during the benchmark; ``None`` keeps the current setting.
        fast: ReFusion's fast exact pass (other architectures always run as modules).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (:mod:`tdfusion_core.common.precision`).
        strip_rows: the fast pass by strips of that many rows.
        compare: a second configuration (:class:`FuseConfig` or its text form, e.g. ``"eager"``) timed
            interleaved with this one; its figures go under ``"compare"`` with ``speedup`` = its time / this time.
        keep_memory: apply :func:`tdfusion_core.common.speed.keep_freed_memory` first (process-wide, as ``tdfusion fuse``
            does on its fast path); ``False`` measures with glibc's default allocator behaviour.

    Returns:
        ``ms_per_image`` (median wall), ``cpu_ms_per_image`` (median CPU), ``images_per_s``, ``peak_memory_mb``
        (with ``peak_memory_kind``), ``max_abs_diff`` (vs fp32 eager), ``first_call_s``, the configuration and
        ``machine`` (:func:`tdfusion_core.apps.bench.machine.machine_info`).
    """
    if iters < 1 or batch_size < 1:
        raise ValueError("iters and batch_size must be at least 1")
    dev = pick_device(device)
    autocast_dtype(precision)  # validate the name before building anything
    config = FuseConfig(fast, precision, compile, channels_last, strip_rows)
    other = FuseConfig.parse(compare) if isinstance(compare, str) else compare
    if keep_memory:
        keep_freed_memory()
    with torch_threads(threads):
        result = _bench(size, dev, config, other, batch_size, iters, warmup, arch, checkpoint, seed)
    result["keep_freed_memory"] = keep_memory
    return result


def _bench(
    size: tuple[int, int],
    dev: torch.device,
    config: FuseConfig,
    other: FuseConfig | None,
    batch_size: int,
    iters: int,
    warmup: int,
    arch: str,
    checkpoint: str | Path | None,
    seed: int,
) -> dict[str, Any]:
    h, w = size
    start_info = machine_info(dev)
    torch.manual_seed(seed)
    net = _build(arch, checkpoint).to(dev).eval()
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch_size, 2, h, w, generator=gen).to(dev)
    with torch.inference_mode():
        reference = net(x).float()
    configs = [config] + ([other] if other is not None else [])
    runners = [_runner(net, x, c, dev) for c in configs]
    stats = _time_calls(runners, dev, iters, warmup)
    if dev.type == "cuda":
        peak_mb: float | None = torch.cuda.max_memory_allocated(dev) / 2**20
        peak_kind = "cuda_max_allocated"
    else:
        peak_mb = _peak_rss_mb()
        peak_kind = "process_peak_rss"

    def figures(c: FuseConfig, s: dict[str, Any]) -> dict[str, Any]:
        ms = statistics.median(s["wall"]) / batch_size * 1000.0
        return {
            "config": c.label(),
            "fast": c.fast,
            "precision": c.precision,
            "dtype": str(PRECISIONS[c.precision]).replace("torch.", ""),
            "amp": c.precision != "fp32",
            "compile": c.compile,
            "channels_last": c.channels_last,
            "strip_rows": c.strip_rows,
            "ms_per_image": ms,
            "cpu_ms_per_image": statistics.median(s["cpu"]) / batch_size * 1000.0,
            "images_per_s": 1000.0 / ms,
            "first_call_s": s["first_call_s"],
            "max_abs_diff": float((s["out"].float() - reference).abs().max()),
        }

    result: dict[str, Any] = {
        "benchmark": "fuse",
        "arch": config_arch(arch, checkpoint),
        "size": [h, w],
        "batch_size": batch_size,
        "device": str(dev),
        "device_name": device_name(dev),
        **figures(config, stats[0]),
        "iters": iters,
        "warmup": warmup,
        "peak_memory_mb": peak_mb,
        "peak_memory_kind": peak_kind,
        "params": sum(p.numel() for p in net.parameters()),
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": {**start_info, "load_average_end": machine_info(dev)["load_average"]},
    }
    if other is not None:
        compared = figures(other, stats[1])
        compared["speedup"] = compared["ms_per_image"] / result["ms_per_image"]
        compared["cpu_speedup"] = compared["cpu_ms_per_image"] / max(result["cpu_ms_per_image"], 1e-9)
        result["compare"] = compared
    return result


def config_arch(arch: str, checkpoint: str | Path | None) -> str:
    return arch if checkpoint is None else f"checkpoint:{checkpoint}"


def format_result(result: dict[str, Any]) -> str:
    """Human-readable one-screen form of :func:`bench_fuse`'s result."""
    h, w = result["size"]
    peak = result["peak_memory_mb"]
    peak_text = "n/a" if peak is None else f"{peak:.1f} MiB ({result['peak_memory_kind']})"
    lines = [
        f"fuse {h}x{w}, batch {result['batch_size']}, {result['device']} ({result['device_name']}), "
        f"{result['threads']} thread(s), {result['iters']} iterations, load average {result['machine']['load_average']}",
    ]
    rows = [result] + ([result["compare"]] if "compare" in result else [])
    for r in rows:
        lines += [
            f"  [{r['config']}] {r['ms_per_image']:.2f} ms/image (median wall), {r['cpu_ms_per_image']:.2f} CPU "
            f"ms/image, {r['images_per_s']:.2f} images/s",
            f"    max |difference| to fp32 eager: {r['max_abs_diff']:.3g}; first call (incl. compilation): "
            f"{r['first_call_s']:.2f} s",
        ]
    if "compare" in result:
        c = result["compare"]
        lines.append(
            f"  [{result['config']}] is {c['speedup']:.2f}x faster than [{c['config']}] (wall), "
            f"{c['cpu_speedup']:.2f}x (CPU time)"
        )
    lines.append(f"  peak memory: {peak_text}")
    return "\n".join(lines)
