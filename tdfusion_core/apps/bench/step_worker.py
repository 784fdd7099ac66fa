"""Time the trainer's meta step pair and fusion step in this process, for :mod:`tdfusion_core.apps.bench.trees`.

Run as a script (``python path/to/step_worker.py JSON``) with another source tree first on ``PYTHONPATH``: it imports
only what older trees also have (``MetaTrainer``, ``TrainConfig``, ``bench.meta.RandomScenes``, from their old
paths in a tree from before the layer folders), so the same measurement runs on two commits. Prints one JSON line: CPU and wall seconds of each timed step, the process's peak
resident set size, the tree's ``tdfusion_core`` path.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Build a trainer as ``spec`` says, warm up, time ``spec["steps"]`` meta pairs and fusion steps."""
    import torch

    import tdfusion_core

    try:
        from tdfusion_core.apps.bench.meta import RandomScenes
        from tdfusion_core.plugin.registry import get_task
        from tdfusion_core.training.config import TrainConfig
        from tdfusion_core.training.trainer import MetaTrainer
    except ImportError:  # a tree from before the layer folders
        from tdfusion_core.bench.meta import RandomScenes  # type: ignore[no-redef]
        from tdfusion_core.config import TrainConfig  # type: ignore[no-redef]
        from tdfusion_core.registry import get_task  # type: ignore[no-redef]
        from tdfusion_core.trainer import MetaTrainer  # type: ignore[no-redef]

    torch.set_num_threads(int(spec["threads"]))
    options = {"num_classes": spec["num_classes"], **spec["task_options"]}
    task = get_task(spec["task"], **options)
    data = RandomScenes(4, tuple(spec["image_size"]), task.target_kind, spec["num_classes"])
    torch.manual_seed(0)
    config = TrainConfig(
        task=spec["task"],
        fusion_net="refusion",
        loss_generator="lpn",
        meta_mode=spec["mode"],
        device="cpu",
        crop_size=tuple(spec["crop_size"]),
        task_size=tuple(spec["task_size"]),
        progress=False,
        log_images=False,
        **spec["train_options"],
    )
    trainer = MetaTrainer(config, task=get_task(spec["task"], **options), train_set=data)
    batcher = getattr(trainer, "batcher", None)
    prepare = batcher.whole if batcher is not None else trainer._prepare  # type: ignore[attr-defined]  # older trees
    gen = torch.Generator().manual_seed(0)
    crop, mtr = prepare([data[0]], gen)
    _, mts = prepare([data[1]], gen)
    times: dict[str, list[float]] = {"meta_cpu": [], "meta_wall": [], "fusion_cpu": [], "fusion_wall": []}
    for step in range(spec["warmup"] + spec["steps"]):
        for name, call in (
            ("meta", lambda: trainer.meta_update(crop, mtr, mts)),
            ("fusion", lambda: trainer.fusion_update(crop, mtr)),
        ):
            c0, t0 = _cpu(), time.perf_counter()
            call()
            if step >= spec["warmup"]:
                times[f"{name}_cpu"].append(_cpu() - c0)
                times[f"{name}_wall"].append(time.perf_counter() - t0)
    return {
        **times,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "tree": tdfusion_core.__file__,
        "torch": torch.__version__,
    }


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))))
