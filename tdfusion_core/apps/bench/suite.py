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

Nothing measured is lost: ``suite.json`` and ``suite.md`` are rewritten after every figure (``"complete": false``
until the last), so a run stopped by a time limit keeps what it measured; a figure that raises is recorded as failed,
with the error in its note, and the suite goes on. The compiled fusion figures come last, because compiling takes
longest.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from functools import partial
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

Row = dict[str, Any]
#: ``record(name, figure)``: measure ``figure()`` (one row, or the rows measured together), keep and save them
Record = Callable[[str, Callable[[], Row | list[Row]]], None]


def _row(name: str, value: float | None, unit: str, target_key: str | None, note: str = "") -> Row:
    target = TARGETS[target_key][0] if target_key else None
    met = None if target is None or value is None else bool(value <= target)
    return {"figure": name, "value": value, "unit": unit, "target": target, "met": met, "note": note}


def _fuse_figure(device: str, quick: bool, size: tuple[int, int], label: str, config: str) -> Row:
    from tdfusion_core.apps.bench.fuse import bench_fuse

    result = bench_fuse(
        size=size,
        device=device,
        precision="bf16" if config == "bf16" else "fp32",
        compile=config == "compile",
        iters=2 if quick else 20,
        warmup=1 if quick else 3,
        threads=1 if device == "cpu" else None,
    )
    key = "fuse 480x640 fp32" if label == "480x640" and config in ("fp32", "compile") else None
    note = f"max |diff| to fp32 eager {result['max_abs_diff']:.2g}; first call {result['first_call_s']:.1f} s"
    return _row(f"fuse {label} {config}", result["ms_per_image"], "ms", key, note)


def _fuse_rows(device: str, quick: bool, configs: Sequence[str], record: Record) -> None:
    sizes = [(48, 64), (64, 80)] if quick else [(480, 640), (1024, 1280)]
    labels = ["480x640", "1024x1280"]
    for config in configs:
        for size, label in zip(sizes, labels, strict=True):
            record(f"fuse {label} {config}", partial(_fuse_figure, device, quick, size, label, config))


def _task_available(task: str) -> str | None:
    """``None`` when ``task`` can be built, else the reason (a missing plugin or framework)."""
    from tdfusion_core.plugin.registry import get_task

    try:
        get_task(task, num_classes=9)
    except Exception as exc:  # a missing plugin, or one whose framework is not installed
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def _meta_figures(
    device: str, quick: bool, task: str, name: str, task_size: tuple[int, int], precision: str
) -> list[Row]:
    """Meta pair, fusion step and peak memory of ``task``, measured together."""
    from tdfusion_core.apps.bench.meta import bench_meta

    result = bench_meta(
        task=task,
        device=device,
        modes=("jvp",),
        amp=precision == "bf16",
        iters=1 if quick else 10,
        warmup=0 if quick else 3,
        image_size=(48, 64) if quick else (480, 640),
        crop_size=(32, 32) if quick else (256, 256),
        task_size=(48, 64) if quick else task_size,
        threads=1 if device == "cpu" else None,
        num_classes=9,
    )
    r = result["modes"]["jvp"]
    return [
        _row(f"meta pair {precision}, {name}", r["meta_pair_ms"], "ms", f"meta pair {precision}"),
        _row(f"fusion step {precision}, {name}", r["fusion_step_ms"], "ms", "fusion step"),
        _row(f"peak memory {precision}, {name}", r["peak_memory_mb"], "MiB", "peak memory", r["peak_memory_kind"]),
    ]


def _meta_rows(device: str, quick: bool, tasks: Sequence[str], record: Record) -> None:
    for task in tasks:
        name, task_size = TASKS.get(task, (task, (240, 320)))
        reason = _task_available(task)
        if reason is not None:
            figure = f"meta pair fp32, {name}"
            line = f"SKIPPED {task} ({name}): its plugin is not usable here ({reason}); install it to measure it"
            record(figure, partial(_row, figure, None, "ms", "meta pair fp32", line))
            continue
        for precision in ("fp32", "bf16"):
            figures = partial(_meta_figures, device, quick, task, name, task_size, precision)
            record(f"meta pair, fusion step, peak memory {precision}, {name}", figures)


def _backend(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


def _distributed_row(device: str, quick: bool) -> Row:
    from tdfusion_core.apps.bench.scaling import bench_scaling

    start = time.perf_counter()
    result = bench_scaling(nprocs=[1], device=device, steps=2 if quick else 4, warmup=1)
    seconds = time.perf_counter() - start
    row = result["rows"][0]
    note = f"finished; meta step {row['meta_step_ms']:.1f} ms, fusion step {row['fusion_step_ms']:.1f} ms"
    return {"figure": f"1-process {_backend(device)} trainer run", "value": round(seconds, 2), "unit": "s",
            "target": None, "met": True, "note": note}  # fmt: skip


def _failed_row(name: str, exc: BaseException) -> Row:
    """The row of a figure whose measurement raised: no value, not met, the error's first line as the note."""
    message = str(exc).splitlines()[0] if str(exc) else ""
    return {"figure": f"{name} (failed)", "value": None, "unit": "", "target": None, "met": False,
            "note": f"failed: {type(exc).__name__}: {message}"}  # fmt: skip


def run_suite(
    device: str = "cuda",
    quick: bool = False,
    tasks: Sequence[str] = ("segformer", "yolo"),
    out_dir: str | Path = "bench-suite",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every figure, write ``suite.json`` and ``suite.md`` into ``out_dir`` after each one (module docstring);
    returns the JSON-ready result."""
    from tdfusion_core.apps.bench.machine import machine_info
    from tdfusion_core.common.speed import keep_freed_memory

    keep_freed_memory()
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "suite": "gpu" if device.startswith("cuda") else device,
        "device": device,
        "quick": quick,
        "complete": False,
        "machine": machine_info(device),
        "seconds": 0.0,
        "rows": [],
    }

    def save() -> None:
        result["seconds"] = round(time.perf_counter() - start, 1)
        (out / "suite.json").write_text(json.dumps(result, indent=1) + "\n")
        (out / "suite.md").write_text(format_markdown(result))

    def record(name: str, figure: Callable[[], Row | list[Row]]) -> None:
        try:
            made = figure()
        except Exception as exc:  # one broken figure must not cost the others
            made = _failed_row(name, exc)
        for row in made if isinstance(made, list) else [made]:
            result["rows"].append(row)
            log(f"{row['figure']}: {_value(row)}" + (f" ({row['note']})" if row["note"] else ""))
        save()

    _fuse_rows(device, quick, ("fp32", "bf16"), record)
    _meta_rows(device, quick, tasks, record)
    record(f"1-process {_backend(device)} trainer run", partial(_distributed_row, device, quick))
    if not quick:  # compiling on a CPU takes minutes; the GPU run covers it
        _fuse_rows(device, quick, ("compile",), record)
    result["complete"] = True
    save()
    log(f"wrote {out / 'suite.json'} and {out / 'suite.md'} ({result['seconds']} s)")
    return result


def _value(row: Row) -> str:
    if row["value"] is None:
        return "failed" if row["note"].startswith("failed") else "skipped"
    return f"{row['value']:.2f} {row['unit']}"


def format_markdown(result: dict[str, Any]) -> str:
    """The suite's figures as a Markdown table, each next to its target."""
    m = result["machine"]
    where = m.get("gpu") or m["cpu"]
    lines = [
        f"Benchmark suite on {where} (torch {m['torch']}, {result['device']}"
        + (", quick sizes: not comparable to the targets" if result["quick"] else "")
        + f"), {result['seconds']} s"
        + ("." if result.get("complete", True) else ", **incomplete**: the run stopped or is still running."),
        "",
        "| figure | value | target | met | note |",
        "|---|---:|---:|:---:|---|",
    ]
    for r in result["rows"]:
        value = _value(r)
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
