"""Scaling benchmark: the trainer's meta and fusion steps with 1, 2, ... processes (``tdfusion bench scaling``).

Each process count runs in freshly spawned processes joined the way ``torchrun`` joins them (gloo on CPU on
127.0.0.1, NCCL with ``--device cuda``, one GPU per process). Every process builds the same
:class:`~tdfusion_core.training.trainer.MetaTrainer` on random scenes, prepares its share of ``steps`` global batches with the
trainer's own sharding (:meth:`tdfusion_core.training.batches.Batcher.meta_phase`), then times :meth:`MetaTrainer.meta_update` and
:meth:`MetaTrainer.fusion_update` after ``warmup`` untimed steps (data preparation and start-up are not included;
the slowest process's time counts).

* ``strong`` scaling (default): the global batch stays ``batch_size``; P processes split it, so the ideal time per
  step is ``t1 / P``. Efficiency = ``t1 / (P · tP)``.
* ``weak`` scaling: the global batch grows to ``batch_size · P`` (each process keeps the 1-process batch); the ideal
  time per step is ``t1``. Efficiency = ``t1 / tP``.

On CPU each process gets ``threads`` torch threads (default 1, as torchrun sets ``OMP_NUM_THREADS=1``): P processes
then use P cores, and the efficiency says how much of the extra cores turns into throughput. (Comparing 1 process on
all cores instead is what ``--threads`` is for; on a shared, busy machine torch's intra-op thread pool can be far
slower than one thread, which would flatter the multi-process rows.) ``samples/s`` counts samples of the global batch (before the Switch doubles them) per meta step + fusion
step pair. ``cpu_efficiency`` is the same ratio computed from each process's CPU time instead of the wall time
(the slowest process's): with one thread per process it is the efficiency on idle, dedicated cores, minus the time
spent waiting in collectives — a more stable figure on a machine that other jobs share, where the wall-time
efficiency can only show that the cores were already busy.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from tdfusion_core.commands.options import batch_size_option, device_option, json_option, size_callback, threads_option


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _worker(rank: int, world: int, port: int, settings: dict[str, Any], out: str) -> None:
    """One process of one row: build the trainer, prepare batches, time the steps; rank 0 writes the result."""
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    import torch
    import torch.distributed as dist

    from tdfusion_core.apps.bench.meta import RandomScenes
    from tdfusion_core.plugin.registry import get_task
    from tdfusion_core.training.config import TrainConfig
    from tdfusion_core.training.distributed import shutdown_distributed
    from tdfusion_core.training.trainer import MetaTrainer

    if settings["threads"]:
        torch.set_num_threads(int(settings["threads"]))
    try:
        task = get_task(settings["task"], num_classes=settings["num_classes"], **settings["task_options"])
        data = RandomScenes(
            max(8, 4 * settings["global_batch"]),
            tuple(settings["image_size"]),
            task.target_kind,
            settings["num_classes"],
        )
        config = TrainConfig(
            task=settings["task"],
            fusion_net=settings["arch"],
            fusion_options=settings["fusion_options"],
            loss_generator=settings["loss_generator"],
            loss_generator_options=settings["loss_generator_options"],
            batch_size=settings["global_batch"],
            crop_size=tuple(settings["crop_size"]),
            task_size=tuple(settings["task_size"]),
            meta_mode=settings["mode"],
            meta_sync=settings["meta_sync"],
            device=settings["device"],
            progress=False,
            log_images=False,
        )
        torch.manual_seed(0)
        trainer = MetaTrainer(config, task=task, train_set=data)
        device = trainer.device
        n = settings["steps"] + settings["warmup"]
        meta_batches = list(trainer.batcher.meta_phase(trainer.train_set, 0, n))

        def timed(fn: Any) -> tuple[float, float]:
            """Wall and CPU milliseconds per step (the slowest process's)."""
            for args in meta_batches[: settings["warmup"]]:
                fn(*args)
            _sync(device)
            if trainer.dist.enabled:
                dist.barrier()
            start, cpu_start = time.perf_counter(), time.process_time()
            for args in meta_batches[settings["warmup"] :]:
                fn(*args)
            _sync(device)
            seconds = torch.tensor(
                [time.perf_counter() - start, time.process_time() - cpu_start], dtype=torch.float64, device=device
            )
            if trainer.dist.enabled:
                dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
            wall, cpu = (float(v) / settings["steps"] * 1000.0 for v in seconds)
            return wall, cpu

        meta_ms, meta_cpu = timed(lambda crop, mtr, mts: trainer.meta_update(crop, mtr, mts))
        fusion_ms, fusion_cpu = timed(lambda crop, mtr, mts: trainer.fusion_update(crop, mtr))
        if rank == 0:
            items = trainer.sampler.shards.items_per_rank
            result = {
                "processes": world,
                "global_batch": settings["global_batch"],
                "items_per_process": items,
                "threads_per_process": torch.get_num_threads() if device.type == "cpu" else None,
                "meta_step_ms": round(meta_ms, 2),
                "fusion_step_ms": round(fusion_ms, 2),
                "meta_step_cpu_ms": round(meta_cpu, 2),
                "fusion_step_cpu_ms": round(fusion_cpu, 2),
            }
            Path(out).write_text(json.dumps(result))
    finally:
        shutdown_distributed()


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_scaling(
    nprocs: Sequence[int] = (1, 2),
    scaling: str = "strong",
    batch_size: int = 2,
    device: str = "cpu",
    task: str = "tiny-seg",
    task_options: dict[str, Any] | None = None,
    num_classes: int = 9,
    arch: str = "refusion",
    fusion_options: dict[str, Any] | None = None,
    loss_generator: str = "lpn",
    loss_generator_options: dict[str, Any] | None = None,
    image_size: tuple[int, int] = (96, 128),
    crop_size: tuple[int, int] = (64, 64),
    task_size: tuple[int, int] = (96, 128),
    mode: str = "jvp",
    meta_sync: str = "union",
    steps: int = 4,
    warmup: int = 1,
    threads: int | None = None,
) -> dict[str, Any]:
    """Time the meta and fusion steps for each process count; returns one JSON-ready dict (see the module doc)."""
    import torch
    import torch.multiprocessing as mp

    if scaling not in ("strong", "weak"):
        raise ValueError(f"scaling must be 'strong' or 'weak', not {scaling!r}")
    if not nprocs or min(nprocs) < 1:
        raise ValueError(f"process counts must be >= 1, got {list(nprocs)}")
    if device.startswith("cuda") and max(nprocs) > torch.cuda.device_count():
        raise ValueError(f"{max(nprocs)} processes need as many GPUs; {torch.cuda.device_count()} visible")
    cores = os.cpu_count() or 1
    rows = []
    for p in nprocs:
        settings = {
            "task": task,
            "task_options": dict(task_options or {}),
            "num_classes": num_classes,
            "arch": arch,
            "fusion_options": dict(fusion_options or {}),
            "loss_generator": loss_generator,
            "loss_generator_options": dict(loss_generator_options or {}),
            "global_batch": batch_size * (p if scaling == "weak" else 1),
            "image_size": list(image_size),
            "crop_size": list(crop_size),
            "task_size": list(task_size),
            "mode": mode,
            "meta_sync": meta_sync,
            "device": device,
            "steps": steps,
            "warmup": warmup,
            "threads": (threads or 1) if device == "cpu" else threads,
        }
        with tempfile.TemporaryDirectory() as tmp:
            out = str(Path(tmp) / "result.json")
            old = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "GLOO_SOCKET_IFNAME")}
            os.environ["OMP_NUM_THREADS"] = str(settings["threads"] or 1)
            if os.uname().sysname == "Linux":
                os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
            try:
                mp.spawn(_worker, args=(p, _free_port(), settings, out), nprocs=p, join=True)
            finally:
                for k, v in old.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            rows.append(json.loads(Path(out).read_text()))
    for row in rows:
        row["samples_per_s"] = row["global_batch"] / (row["meta_step_ms"] + row["fusion_step_ms"]) * 1000.0
    base = rows[0]
    for row in rows:
        # throughput ideally grows with the process count (strong: same batch, less time; weak: more samples)
        row["speedup"] = round(row["samples_per_s"] / base["samples_per_s"], 3)
        row["efficiency"] = round(row["speedup"] / (row["processes"] / base["processes"]), 3)
        # CPU time of the slowest process: what the wall time would be on idle, dedicated cores (1 thread each),
        # leaving out time spent waiting for the others
        cpu = row["meta_step_cpu_ms"] + row["fusion_step_cpu_ms"]
        base_cpu = base["meta_step_cpu_ms"] + base["fusion_step_cpu_ms"]
        row["cpu_efficiency"] = round(
            (row["global_batch"] / cpu) / (base["global_batch"] / base_cpu) / (row["processes"] / base["processes"]),
            3,
        )
    for row in rows:
        row["samples_per_s"] = round(row["samples_per_s"], 3)
    return {
        "device": device if not device.startswith("cuda") else torch.cuda.get_device_name(0),
        "cpu_cores": cores,
        "scaling": scaling,
        "task": task,
        "arch": arch,
        "meta_mode": mode,
        "meta_sync": meta_sync,
        "image_size": list(image_size),
        "crop_size": list(crop_size),
        "task_size": list(task_size),
        "batch_size": batch_size,
        "switch": True,
        "steps": steps,
        "torch": torch.__version__,
        "rows": rows,
    }


def format_scaling(result: dict[str, Any]) -> str:
    """Human-readable table of :func:`bench_scaling` results."""
    lines = [
        f"{result['scaling']} scaling on {result['device']} ({result['cpu_cores']} cores), task {result['task']}, "
        f"{result['arch']}, {result['meta_mode']}, meta_sync {result['meta_sync']}; sources {result['image_size']}, crop {result['crop_size']}, "
        f"task input {result['task_size']}; batch_size {result['batch_size']} (+ Switch); {result['steps']} steps",
        f"{'procs':>5}{'global batch':>13}{'items/proc':>11}{'threads':>8}{'meta ms':>10}{'fusion ms':>10}"
        f"{'meta cpu':>10}{'fusion cpu':>11}{'samples/s':>10}{'speedup':>8}{'efficiency':>11}{'cpu eff.':>9}",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['processes']:>5}{r['global_batch']:>13}{r['items_per_process']:>11}{r['threads_per_process'] or '-':>8}"
            f"{r['meta_step_ms']:>10.1f}{r['fusion_step_ms']:>10.1f}{r['meta_step_cpu_ms']:>10.1f}"
            f"{r['fusion_step_cpu_ms']:>11.1f}{r['samples_per_s']:>10.2f}{r['speedup']:>8.2f}{r['efficiency']:>11.2f}"
            f"{r['cpu_efficiency']:>9.2f}"
        )
    lines.append("(ms: wall / CPU milliseconds per step of the slowest process; cpu eff.: efficiency by CPU time)")
    return "\n".join(lines)


def _counts(_ctx: click.Context, _param: click.Parameter, value: str) -> list[int]:
    try:
        counts = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected process counts like 1,2,4, got {value!r}") from None
    if not counts or min(counts) < 1:
        raise click.BadParameter(f"expected process counts >= 1, got {value!r}")
    return counts


@click.command(name="scaling")
@click.option("--nprocs", default="1,2", show_default=True, callback=_counts, help="Process counts to compare.")
@click.option("--scaling", type=click.Choice(["strong", "weak"]), default="strong", show_default=True)
@batch_size_option(2, help="Global batch (weak scaling: times the process count).")
@device_option("cpu", help="cpu (gloo) or cuda (NCCL, one GPU per process).")
@click.option("--task", default="tiny-seg", show_default=True, help="Registered task.")
@click.option("--arch", default="refusion", show_default=True, help="Registered fusion architecture.")
@click.option("--mode", type=click.Choice(["jvp", "double-backward", "finite-difference"]), default="jvp")
@click.option("--meta-sync", type=click.Choice(["union", "per-shard"]), default="union", show_default=True)
@click.option("--size", default="96x128", show_default=True, callback=size_callback(), help="Source size HEIGHTxWIDTH.")
@click.option("--crop", default="64x64", show_default=True, callback=size_callback(), help="Fusion-loss crop.")
@click.option("--task-size", default="96x128", show_default=True, callback=size_callback(), help="Task input size.")
@click.option("--steps", type=click.IntRange(min=1), default=4, show_default=True, help="Timed steps per phase.")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True, help="Untimed steps first.")
@threads_option("Torch threads per process (CPU; default 1).")
@json_option()
def scaling_command(
    nprocs: list[int],
    scaling: str,
    batch_size: int,
    device: str,
    task: str,
    arch: str,
    mode: str,
    meta_sync: str,
    size: tuple[int, int],
    crop: tuple[int, int],
    task_size: tuple[int, int],
    steps: int,
    warmup: int,
    threads: int | None,
    as_json: bool,
) -> None:
    """Scaling efficiency of multi-process training: meta and fusion steps with 1, 2, ... processes."""
    try:
        # Each option passed on by name: alike in shape only to the other commands' calls of their functions.
        result = bench_scaling(
            nprocs=nprocs,
            scaling=scaling,
            batch_size=batch_size,
            device=device,
            task=task,
            arch=arch,
            mode=mode,
            meta_sync=meta_sync,
            image_size=size,
            crop_size=crop,
            task_size=task_size,
            steps=steps,
            warmup=warmup,
            threads=threads,
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(result) if as_json else format_scaling(result))
