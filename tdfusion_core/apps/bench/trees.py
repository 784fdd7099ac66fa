"""Two source trees (e.g. two commits' worktrees) side by side: ``tdfusion bench trees``.

Each tree's meta step pair and fusion step are timed by :mod:`tdfusion_core.apps.bench.step_worker` in a fresh process
with that tree first on ``PYTHONPATH`` (and the extra paths, e.g. plugins, after it). Processes alternate between
the trees round by round (A, B, A, B, ...), so both see the same machine load; each reports CPU time (user +
system: the steady figure on a shared machine) and wall time per step and its peak resident set size. The result
has the medians per tree and, for every tree after the first, its speed-up over the first (``first / tree``, the
ratio of the medians) with a 95 % bootstrap interval: each tree's samples are resampled on their own, so the
interval shows how far the machine's spread alone can move the ratio.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from tdfusion_core.apps.bench import step_worker
from tdfusion_core.apps.bench.machine import load_average, machine_info
from tdfusion_core.commands.options import key_value_option, key_value_options, size_callback

#: glibc settings equal to :func:`tdfusion_core.common.speed.keep_freed_memory`, given to every tree's process alike
KEEP_FREED_MEMORY_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}


def speedup_interval(
    reference: Sequence[float], samples: Sequence[float], level: float = 0.95, resamples: int = 4000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``median(reference) / median(samples)``; each list is resampled on its own
    (the processes of two trees are not paired). Seeded, so the same samples give the same interval."""
    rng = random.Random(seed)
    ratios = sorted(
        statistics.median(rng.choices(reference, k=len(reference)))
        / statistics.median(rng.choices(samples, k=len(samples)))
        for _ in range(resamples)
    )
    tail = (1.0 - level) / 2.0
    return ratios[int(tail * resamples)], ratios[min(resamples - 1, int((1.0 - tail) * resamples))]


def run_worker(tree: Path, spec: dict[str, Any], extra_paths: Sequence[str], env: dict[str, str]) -> dict[str, Any]:
    """One worker process on ``tree``; returns its JSON report (raises with its stderr if it fails)."""
    paths = [str(tree), *(str(tree / p) if not os.path.isabs(p) else p for p in extra_paths)]
    child_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(paths), "OMP_NUM_THREADS": str(spec["threads"])}
    source = Path(step_worker.__file__).read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as cwd:  # -c puts the working directory first on sys.path: an empty one
        proc = subprocess.run(
            [sys.executable, "-c", source, json.dumps(spec)], env=child_env, cwd=cwd, capture_output=True, text=True
        )
    if proc.returncode != 0:
        raise RuntimeError(f"the step worker failed on {tree}:\n{proc.stderr[-4000:]}")
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


def compare_trees(
    trees: dict[str, Path],
    spec: dict[str, Any],
    rounds: int = 2,
    extra_paths: Sequence[str] = (),
    keep_freed_memory: bool = True,
) -> dict[str, Any]:
    """Time ``spec`` (see :func:`step_worker.run`) on every tree, ``rounds`` interleaved processes each."""
    env = KEEP_FREED_MEMORY_ENV if keep_freed_memory else {}
    reports: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    result: dict[str, Any] = {"spec": spec, "rounds": rounds, "machine": machine_info("cpu"), "trees": {}}
    for _ in range(rounds):
        for name, tree in trees.items():
            reports[name].append(run_worker(tree, spec, extra_paths, env))
    for name, runs in reports.items():
        joined = {
            key: [v for r in runs for v in r[key]] for key in ("meta_cpu", "meta_wall", "fusion_cpu", "fusion_wall")
        }
        result["trees"][name] = {
            "path": str(trees[name]),
            "module": runs[0]["tree"],
            **{f"{key}_s": round(statistics.median(values), 3) for key, values in joined.items()},
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1),
            "samples": joined,
        }
    first, *others = trees
    base = result["trees"][first]
    for name in others:
        tree = result["trees"][name]
        tree["speedup_over_" + first] = {
            "meta_cpu": round(base["meta_cpu_s"] / tree["meta_cpu_s"], 3),
            "fusion_cpu": round(base["fusion_cpu_s"] / tree["fusion_cpu_s"], 3),
            "peak_rss": round(base["peak_rss_mb"] / tree["peak_rss_mb"], 3),
        }
        tree["speedup_interval_over_" + first] = {
            key: [round(v, 3) for v in speedup_interval(base["samples"][key], tree["samples"][key])]
            for key in ("meta_cpu", "fusion_cpu")
        }
    result["machine"]["load_average_end"] = load_average()
    result["env"] = env
    return result


def format_trees(result: dict[str, Any]) -> str:
    """A text table of :func:`compare_trees`'s result."""
    spec = result["spec"]
    lines = [
        f"task {spec['task']} {spec['task_options']}, mode {spec['mode']}, sources {spec['image_size']}, crop "
        f"{spec['crop_size']}, task input {spec['task_size']}, {spec['threads']} thread(s), {result['rounds']} "
        f"interleaved processes x {spec['steps']} steps per tree (medians)",
        f"{'tree':<12}{'meta CPU s':>12}{'fusion CPU s':>14}{'meta wall s':>13}{'fusion wall s':>15}{'peak MB':>10}",
    ]
    for name, t in result["trees"].items():
        lines.append(
            f"{name:<12}{t['meta_cpu_s']:>12.3f}{t['fusion_cpu_s']:>14.3f}{t['meta_wall_s']:>13.3f}"
            f"{t['fusion_wall_s']:>15.3f}{t['peak_rss_mb']:>10.0f}"
        )
        for key, value in t.items():
            if key.startswith("speedup_over_"):
                interval = t[key.replace("speedup_", "speedup_interval_")]
                meta, fusion = (f"{value[k]}x [{interval[k][0]}, {interval[k][1]}]" for k in ("meta_cpu", "fusion_cpu"))
                lines.append(f"  {key}: meta {meta}, fusion {fusion} (CPU time; 95 % bootstrap interval)")
    return "\n".join(lines)


@click.command(name="trees")
@click.option(
    "--tree",
    "tree_args",
    multiple=True,
    required=True,
    metavar="NAME=PATH",
    help="A source tree (e.g. a worktree of another commit), repeatable; the first is the reference.",
)
@click.option("--task", default="yolo", show_default=True, help="Registered task.")
@click.option("--mode", default="jvp", show_default=True, type=click.Choice(["jvp", "double-backward"]))
@click.option("--image-size", default="384x512", show_default=True, callback=size_callback())
@click.option("--crop-size", default="128x128", show_default=True, callback=size_callback())
@click.option("--task-size", default="96x128", show_default=True, callback=size_callback())
@click.option("--num-classes", type=click.IntRange(min=1), default=6, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--rounds", type=click.IntRange(min=1), default=2, show_default=True, help="Processes per tree.")
@click.option("--steps", type=click.IntRange(min=1), default=2, show_default=True, help="Timed steps per process.")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True, help="Untimed steps first.")
@key_value_option("--set", "task_sets", help="Task option, repeatable.")
@key_value_option("--train-set", "train_sets", help="Training-config field.")
@click.option(
    "--path",
    "extra_paths",
    multiple=True,
    help="Also on PYTHONPATH, relative to each tree (e.g. plugins/tdfusion-yolo).",
)
@click.option("--default-allocator", is_flag=True, help="Leave glibc malloc as it is in every process.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write the JSON here.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
# One parameter per option: alike in shape only to the other bench commands' signatures.
def trees_command(
    tree_args: tuple[str, ...],
    task: str,
    mode: str,
    image_size: tuple[int, int],
    crop_size: tuple[int, int],
    task_size: tuple[int, int],
    num_classes: int,
    threads: int,
    rounds: int,
    steps: int,
    warmup: int,
    task_sets: tuple[str, ...],
    train_sets: tuple[str, ...],
    extra_paths: tuple[str, ...],
    default_allocator: bool,
    out: Path | None,
    as_json: bool,
) -> None:
    """Meta step pair and fusion step of several source trees, side by side in interleaved processes."""
    trees: dict[str, Path] = {}
    for arg in tree_args:
        name, sep, path = arg.partition("=")
        if not sep or not Path(path, "tdfusion_core").is_dir():
            raise click.BadParameter(
                f"{arg!r}: give NAME=PATH with PATH a source tree holding tdfusion_core/", param_hint="--tree"
            )
        trees[name] = Path(path).resolve()
    spec = {
        "task": task,
        "mode": mode,
        "image_size": list(image_size),
        "crop_size": list(crop_size),
        "task_size": list(task_size),
        "num_classes": num_classes,
        "threads": threads,
        "steps": steps,
        "warmup": warmup,
        "task_options": key_value_options(task_sets, "--set"),
        "train_options": key_value_options(train_sets, "--train-set"),
    }
    result = compare_trees(trees, spec, rounds, extra_paths, keep_freed_memory=not default_allocator)
    if out is not None:
        out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    click.echo(json.dumps(result) if as_json else format_trees(result))


if __name__ == "__main__":
    trees_command()
