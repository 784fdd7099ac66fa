"""Inference benchmark of a fusion network (``tdfusion bench fuse``).

Times the forward pass of the fusion network on random ``(B, 2, H, W)`` sources, with the options that matter for
speed: autocast in bfloat16 or float16 (``amp``), ``torch.compile``, channels-last memory format, batch size. It reports ms per
image, images per second, peak memory (CUDA: ``torch.cuda.max_memory_allocated`` during the timed calls; CPU: the
peak resident set size of the whole process, from :mod:`resource`, which includes everything loaded before), and the
largest absolute difference between the measured configuration's output and the fp32 eager output of the same
network on the same input — the accuracy cost of the speed-up.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tdfusion_core.devices import pick_device
from tdfusion_core.fusion import amp_dtype_for, autocast


def parse_size(text: str) -> tuple[int, int]:
    """``"480x640"`` -> ``(480, 640)`` (height x width)."""
    try:
        h, w = (int(v) for v in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise ValueError(f"expected HEIGHTxWIDTH such as 480x640, got {text!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {text!r}")
    return h, w


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if platform.system() == "Darwin" else peak / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # Linux: the CPU model
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} CPUs)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build(arch: str, checkpoint: str | Path | None) -> nn.Module:
    if checkpoint is not None:
        from tdfusion_core.checkpoints import load_model_checkpoint

        return load_model_checkpoint(checkpoint).fusion_net
    from tdfusion_core.registry import get_fusion_net

    return get_fusion_net(arch, num_sources=2)


def bench_fuse(
    size: tuple[int, int] = (480, 640),
    device: str | torch.device = "cpu",
    amp: bool = False,
    compile: bool = False,
    channels_last: bool = False,
    batch_size: int = 1,
    iters: int = 10,
    warmup: int = 2,
    arch: str = "refusion",
    checkpoint: str | Path | None = None,
    seed: int = 0,
    amp_dtype: str = "auto",
    threads: int | None = None,
) -> dict[str, Any]:
    """Benchmark the fusion network's forward pass and return the figures as a JSON-ready dict.

    Args:
        size: ``(height, width)`` of each image.
        device: ``"cpu"``, ``"cuda"``, ...
        amp: autocast, in ``amp_dtype``.
        compile: ``torch.compile`` the network (compilation happens in the warm-up and is reported as
            ``first_call_s``, not in the timings).
        channels_last: network and input in channels-last memory format.
        batch_size: images per forward pass.
        iters: timed forward passes.
        warmup: untimed forward passes before timing (at least 1).
        arch: registered fusion architecture, built with random weights (ignored when ``checkpoint`` is given).
        checkpoint: a checkpoint to load the network from instead.
        seed: seed of the random weights and input.
        amp_dtype: ``"auto"`` (float16 on CUDA, bfloat16 elsewhere), ``"bfloat16"`` or ``"float16"``.
        threads: CPU threads for torch (``torch.set_num_threads``) during the benchmark; ``None`` keeps the current
            setting. On a busy machine one thread can be far faster than several.

    Returns:
        ``ms_per_image``, ``images_per_s``, ``peak_memory_mb`` (with ``peak_memory_kind``), ``max_abs_diff`` (vs fp32
        eager), ``first_call_s`` and the configuration (``size``, ``device``, ``device_name``, ``amp``, ``compile``,
        ``channels_last``, ``batch_size``, ``iters``, ``params``, ``torch_version``, ``threads``).
    """
    if iters < 1 or batch_size < 1:
        raise ValueError("iters and batch_size must be at least 1")
    dev = pick_device(device)
    amp_dtype_for(dev, amp_dtype)  # validate the name before building anything
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _bench(
            size, dev, amp, amp_dtype, compile, channels_last, batch_size, iters, warmup, arch, checkpoint, seed
        )
    finally:
        torch.set_num_threads(previous_threads)


def _bench(
    size: tuple[int, int],
    dev: torch.device,
    amp: bool,
    amp_dtype: str,
    compile: bool,
    channels_last: bool,
    batch_size: int,
    iters: int,
    warmup: int,
    arch: str,
    checkpoint: str | Path | None,
    seed: int,
) -> dict[str, Any]:
    h, w = size
    torch.manual_seed(seed)
    net = _build(arch, checkpoint).to(dev).eval()
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch_size, 2, h, w, generator=gen).to(dev)

    with torch.inference_mode():
        reference = net(x).float()

    model: Any = net
    inp = x
    if channels_last:
        model = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        inp = x.contiguous(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model)

    def call() -> torch.Tensor:
        with torch.inference_mode(), autocast(dev, amp, amp_dtype):
            out: torch.Tensor = model(inp)
        return out

    t0 = time.perf_counter()
    out = call()
    _sync(dev)
    first_call_s = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        call()
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for _ in range(iters):
        out = call()
    _sync(dev)
    elapsed = time.perf_counter() - t0

    if dev.type == "cuda":
        peak_mb: float | None = torch.cuda.max_memory_allocated(dev) / 2**20
        peak_kind = "cuda_max_allocated"
    else:
        peak_mb = _peak_rss_mb()
        peak_kind = "process_peak_rss"
    ms_per_image = elapsed / (iters * batch_size) * 1000.0
    return {
        "benchmark": "fuse",
        "arch": arch if checkpoint is None else f"checkpoint:{checkpoint}",
        "size": [h, w],
        "batch_size": batch_size,
        "device": str(dev),
        "device_name": _device_name(dev),
        "amp": amp,
        "dtype": str(amp_dtype_for(dev, amp_dtype)).replace("torch.", "") if amp else "float32",
        "compile": compile,
        "channels_last": channels_last,
        "iters": iters,
        "warmup": warmup,
        "ms_per_image": ms_per_image,
        "images_per_s": 1000.0 / ms_per_image,
        "first_call_s": first_call_s,
        "peak_memory_mb": peak_mb,
        "peak_memory_kind": peak_kind,
        "max_abs_diff": float((out.float() - reference).abs().max()),
        "params": sum(p.numel() for p in net.parameters()),
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def format_result(result: dict[str, Any]) -> str:
    """Human-readable one-screen form of :func:`bench_fuse`'s result."""
    h, w = result["size"]
    options = [name for name in ("compile", "channels_last") if result[name]]
    options = ([f"{result['dtype']} autocast"] if result["amp"] else ["float32"]) + (options or ["eager"])
    peak = result["peak_memory_mb"]
    peak_text = "n/a" if peak is None else f"{peak:.1f} MiB ({result['peak_memory_kind']})"
    return "\n".join(
        [
            f"fuse {h}x{w}, batch {result['batch_size']}, {result['device']} ({result['device_name']}), "
            f"{', '.join(options)}, {result['iters']} iterations",
            f"  {result['ms_per_image']:.2f} ms/image, {result['images_per_s']:.2f} images/s",
            f"  peak memory: {peak_text}",
            f"  max |difference| to fp32 eager: {result['max_abs_diff']:.3g}",
            f"  first call (incl. compilation): {result['first_call_s']:.2f} s",
        ]
    )
