"""The meta-step benchmark runs the yolo task on the CPU (tiny sizes; the figures themselves are not asserted)."""

from __future__ import annotations

import math

from tdfusion_core.bench.meta import bench_meta


def test_bench_meta_with_the_yolo_task_on_cpu():
    result = bench_meta(
        task="yolo",
        num_classes=1,
        modes=("jvp",),
        image_size=(64, 96),
        crop_size=(32, 32),
        task_size=(64, 96),
        iters=1,
        warmup=1,
    )
    assert result["task"] == "yolo" and result["device"] == "cpu" and result["task_size"] == [64, 96]
    jvp = result["modes"]["jvp"]
    for key in ("meta_pair_ms", "fusion_step_ms", "peak_memory_mb"):
        assert math.isfinite(jvp[key]) and jvp[key] > 0, (key, jvp)
