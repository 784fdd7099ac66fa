"""`tdfusion bench data`: one epoch of training batches with and without worker processes, identical batches."""

from __future__ import annotations

import json

from click.testing import CliRunner

from tdfusion_core.apps.bench.data import bench_data, data_command
from tests.torch_threads import one_torch_thread  # noqa: F401


def test_bench_data_rows_and_identical_batches(tmp_path):
    result = bench_data(
        "synthetic", {"n": 5, "size": [32, 40], "target": "boxes"}, workers=(0, 1), crop_size=(16, 16), repeats=1
    )
    assert result["batches_identical"] is True and result["samples"] == 5 and result["steps"] == 5
    assert [r["num_workers"] for r in result["rows"]] == [0, 1]
    none, one = result["rows"]
    assert none["workers_cpu_s"] == 0.0 and one["workers_cpu_s"] > 0.0  # the reads happened in the worker
    assert all(r["wall_s"] > 0 and r["main_cpu_s"] > 0 for r in result["rows"])
    json.dumps(result)


def test_bench_data_command_refuses_bad_worker_counts():
    out = CliRunner().invoke(data_command, ["--data", "synthetic", "--workers", "0,x"])
    assert out.exit_code == 2 and "comma-separated integers" in out.output
    out = CliRunner().invoke(data_command, ["--data", "synthetic", "--workers", "-1"])
    assert out.exit_code == 2 and "0 or more" in out.output
