"""The GPU benchmark suite (``tdfusion bench suite``, ``nox -s gpu``): every figure of the performance targets in one
run, written as one JSON file and one Markdown table with each figure next to its target.

Figures (``--device cuda``; targets from the project's performance issue, measured against the released code's
20 ms / 5.54 s / 92 ms / 13.9 GB on an H200):

* ``tdfusion fuse``'s network at 480x640 and 1024x1280: fast pass fp32, bf16, and fp32 under ``torch.compile``
  (target at 480x640: <= 6 ms per image);
* the meta step pair (inner + outer, ``jvp``) and the fusion step of SegFormer-b0 (``segformer``, task input
  240x320) and YOLOv8n (``yolo``, 192x256), sources 480x640, crops 256x256, one pair + its Switch: fp32 and bf16
  (targets: meta pair <= 0.20 s fp32, <= 0.12 s bf16, fusion step <= 70 ms, peak memory <= 4 GB). These tasks come
  from plugins; a task whose plugin is not installed is skipped with a line that says so;
* a one-process run of the distributed trainer's steps over NCCL (gloo on the CPU), which must finish.

``quick=True`` shrinks every size and iteration count so the whole suite runs on a CPU in a minute or two (what the
test does, so the suite cannot rot); its figures mean nothing against the targets.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from tdfusion_core.commands.options import device_option, folder_option

#: figure name -> (target, unit, "<=" means lower is better)
TARGETS: dict[str, tuple[float, str]] = {
    "fuse 480x640 fp32": (6.0, "ms"),
    "meta pair fp32": (200.0, "ms"),
    "meta pair bf16": (120.0, "ms"),
    "fusion step": (70.0, "ms"),
    "peak memory": (4096.0, "MiB"),
}
TASKS = {"segformer": ("SegFormer-b0", (240, 320)), "yolo": ("YOLOv8n", (192, 256))}


def _row(name: str, value: float | None, unit: str, target_key: str | None, note: str = "") -> dict[str, Any]:
    target = TARGETS[target_key][0] if target_key else None
    met = None if target is None or value is None else bool(value <= target)
    return {"figure": name, "value": value, "unit": unit, "target": target, "met": met, "note": note}


def _fuse_rows(device: str, quick: bool, log: Callable[[str], None]) -> list[dict[str, Any]]:
    from tdfusion_core.apps.bench.fuse import bench_fuse

    rows = []
    sizes = [(48, 64), (64, 80)] if quick else [(480, 640), (1024, 1280)]
    labels = ["480x640", "1024x1280"]
    for (h, w), label in zip(sizes, labels, strict=True):
        for config in ("fp32", "bf16", "compile"):
            if quick and config == "compile":
                continue  # compiling on a CPU takes minutes; the GPU run covers it
            result = bench_fuse(
                size=(h, w),
                device=device,
                precision="bf16" if config == "bf16" else "fp32",
                compile=config == "compile",
                iters=2 if quick else 20,
                warmup=1 if quick else 3,
                threads=1 if device == "cpu" else None,
            )
            key = "fuse 480x640 fp32" if label == "480x640" and config in ("fp32", "compile") else None
            note = f"max |diff| to fp32 eager {result['max_abs_diff']:.2g}; first call {result['first_call_s']:.1f} s"
            rows.append(_row(f"fuse {label} {config}", result["ms_per_image"], "ms", key, note))
            log(f"fuse {label} {config}: {result['ms_per_image']:.2f} ms/image ({note})")
    return rows


def _task_available(task: str) -> str | None:
    """``None`` when ``task`` can be built, else the reason (a missing plugin or framework)."""
    from tdfusion_core.plugin.registry import get_task

    try:
        get_task(task, num_classes=9)
    except Exception as exc:  # a missing plugin, or one whose framework is not installed
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def _meta_rows(device: str, quick: bool, tasks: Sequence[str], log: Callable[[str], None]) -> list[dict[str, Any]]:
    from tdfusion_core.apps.bench.meta import bench_meta

    rows = []
    for task in tasks:
        name, task_size = TASKS.get(task, (task, (240, 320)))
        reason = _task_available(task)
        if reason is not None:
            line = f"SKIPPED {task} ({name}): its plugin is not usable here ({reason}); install it to measure it"
            log(line)
            rows.append(_row(f"meta pair fp32, {name}", None, "ms", "meta pair fp32", line))
            continue
        for amp in (False, True):
            result = bench_meta(
                task=task,
                device=device,
                modes=("jvp",),
                amp=amp,
                iters=1 if quick else 10,
                warmup=0 if quick else 3,
                image_size=(48, 64) if quick else (480, 640),
                crop_size=(32, 32) if quick else (256, 256),
                task_size=(48, 64) if quick else task_size,
                threads=1 if device == "cpu" else None,
                num_classes=9,
            )
            r = result["modes"]["jvp"]
            precision = "bf16" if amp else "fp32"
            rows.append(_row(f"meta pair {precision}, {name}", r["meta_pair_ms"], "ms", f"meta pair {precision}"))
            rows.append(_row(f"fusion step {precision}, {name}", r["fusion_step_ms"], "ms", "fusion step"))
            rows.append(
                _row(
                    f"peak memory {precision}, {name}", r["peak_memory_mb"], "MiB", "peak memory", r["peak_memory_kind"]
                )
            )
            log(f"{name} {precision}: meta pair {r['meta_pair_ms']:.1f} ms, fusion step {r['fusion_step_ms']:.1f} ms")
    return rows


def _distributed_row(device: str, quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    from tdfusion_core.apps.bench.scaling import bench_scaling

    backend = "nccl" if device.startswith("cuda") else "gloo"
    start = time.perf_counter()
    try:
        result = bench_scaling(nprocs=[1], device=device, steps=2 if quick else 4, warmup=1)
    except Exception as exc:  # the smoke run failing is the figure
        log(f"distributed smoke run ({backend}) FAILED: {exc}")
        return {"figure": f"1-process {backend} trainer run", "value": None, "unit": "s", "target": None,
                "met": False, "note": f"failed: {exc}"}  # fmt: skip
    seconds = time.perf_counter() - start
    row = result["rows"][0]
    note = f"meta step {row['meta_step_ms']:.1f} ms, fusion step {row['fusion_step_ms']:.1f} ms"
    log(f"distributed smoke run ({backend}): finished in {seconds:.1f} s ({note})")
    return {"figure": f"1-process {backend} trainer run", "value": round(seconds, 2), "unit": "s",
            "target": None, "met": True, "note": note}  # fmt: skip


def run_suite(
    device: str = "cuda",
    quick: bool = False,
    tasks: Sequence[str] = ("segformer", "yolo"),
    out_dir: str | Path = "bench-suite",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every figure, write ``suite.json`` and ``suite.md`` into ``out_dir``; returns the JSON-ready result."""
    from tdfusion_core.apps.bench.machine import machine_info
    from tdfusion_core.common.speed import keep_freed_memory

    keep_freed_memory()
    start = time.perf_counter()
    info = machine_info(device)
    rows = _fuse_rows(device, quick, log)
    rows += _meta_rows(device, quick, tasks, log)
    rows.append(_distributed_row(device, quick, log))
    result = {
        "suite": "gpu" if device.startswith("cuda") else device,
        "device": device,
        "quick": quick,
        "machine": info,
        "seconds": round(time.perf_counter() - start, 1),
        "rows": rows,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "suite.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "suite.md").write_text(format_markdown(result))
    log(f"wrote {out / 'suite.json'} and {out / 'suite.md'} ({result['seconds']} s)")
    return result


def format_markdown(result: dict[str, Any]) -> str:
    """The suite's figures as a Markdown table, each next to its target."""
    m = result["machine"]
    where = m.get("gpu") or m["cpu"]
    lines = [
        f"Benchmark suite on {where} (torch {m['torch']}, {result['device']}"
        + (", quick sizes: not comparable to the targets" if result["quick"] else "")
        + f"), {result['seconds']} s.",
        "",
        "| figure | value | target | met | note |",
        "|---|---:|---:|:---:|---|",
    ]
    for r in result["rows"]:
        value = "skipped" if r["value"] is None else f"{r['value']:.2f} {r['unit']}"
        target = "" if r["target"] is None else f"<= {r['target']:g} {r['unit']}"
        met = {None: "", True: "yes", False: "no"}[r["met"]]
        lines.append(f"| {r['figure']} | {value} | {target} | {met} | {r['note']} |")
    return "\n".join(lines) + "\n"


@click.command(name="suite")
@device_option("cuda", help="cuda (the GPU suite) or cpu.")
@click.option("--quick", is_flag=True, help="Tiny sizes and one iteration each (checks that the suite runs).")
@click.option("--task", "tasks", multiple=True, help="Task(s) for the meta figures (default: segformer and yolo).")
@folder_option("--out", "out_dir", default=Path("bench-suite"), help="Folder for suite.json and suite.md.")
def suite_command(device: str, quick: bool, tasks: tuple[str, ...], out_dir: Path) -> None:
    """Every performance figure with its target, in one run: fusion, meta pair, fusion step, memory, NCCL."""
    run_suite(device=device, quick=quick, tasks=tasks or ("segformer", "yolo"), out_dir=out_dir, log=click.echo)
