"""``tdfusion bench meta --task yolo`` runs on the CPU (tiny sizes; the figures themselves are not asserted)."""

from __future__ import annotations

import json
import math

from click.testing import CliRunner

from tdfusion_core.commands.cli import build_cli


def test_bench_meta_cli_with_the_yolo_task_on_cpu():
    args = ["bench", "meta", "--task", "yolo", "--device", "cpu", "--mode", "jvp", "--num-classes", "1", "--json"]
    args += ["--iters", "1", "--warmup", "1", "--image-size", "64x96", "--crop-size", "32x32", "--task-size", "64x96"]
    result = CliRunner().invoke(build_cli(), args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["task"] == "yolo" and report["device"] == "cpu" and report["task_size"] == [64, 96]
    jvp = report["modes"]["jvp"]
    for key in ("meta_pair_ms", "fusion_step_ms", "peak_memory_mb"):
        assert math.isfinite(jvp[key]) and jvp[key] > 0, (key, jvp)
