"""`tdfusion bench meta` runs on the CPU with small sizes (figures are not asserted, only their presence)."""

import json

from click.testing import CliRunner

from tdfusion_core.commands.cli import build_cli


def test_bench_meta_json_side_by_side():
    args = [
        "bench",
        "meta",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--image-size",
        "48x64",
        "--crop-size",
        "32x32",
        "--task-size",
        "48x64",
        "--num-classes",
        "3",
        "--json",
    ]
    result = CliRunner().invoke(build_cli(), args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output.strip().splitlines()[-1])
    assert set(data["modes"]) == {"jvp", "double-backward"}
    for row in data["modes"].values():
        assert row["meta_pair_ms"] > 0 and row["fusion_step_ms"] > 0 and row["peak_memory_mb"] > 0
    assert data["jvp_speedup_over_double_backward"] > 0
    assert data["task_size"] == [48, 64]


def test_bench_meta_threads_task_and_training_options():
    args = ["bench", "meta", "--iters", "1", "--warmup", "0", "--image-size", "32x48", "--crop-size", "24x24"]
    args += ["--task-size", "32x48", "--num-classes", "3", "--mode", "jvp", "--threads", "1", "--json"]
    args += ["--set", "input_kind=rgb", "--train-set", "task_step=sgd"]
    result = CliRunner().invoke(build_cli(), args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output.strip().splitlines()[-1])
    assert data["threads"] == 1 and data["task_options"]["input_kind"] == "rgb"
    assert data["train_options"] == {"task_step": "sgd"} and data["machine"]["cpu_count"] >= 1
    row = data["modes"]["jvp"]
    assert row["meta_pair_cpu_ms"] > 0 and row["fusion_step_cpu_ms"] > 0
    bad = CliRunner().invoke(build_cli(), ["bench", "meta", "--set", "no-equals-sign"])
    assert bad.exit_code == 2 and "KEY=VALUE" in bad.output


def test_bench_meta_rejects_bad_size():
    result = CliRunner().invoke(build_cli(), ["bench", "meta", "--image-size", "48by64"])
    assert result.exit_code != 0 and "HEIGHTxWIDTH" in result.output
