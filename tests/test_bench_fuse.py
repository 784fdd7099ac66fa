"""``tdfusion bench fuse`` on the CPU at a small size: the report's keys and what must hold whatever the speed."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tdfusion_core.apps.bench.fuse import FuseConfig, bench_fuse, parse_size
from tdfusion_core.commands.cli import build_cli
from tests.conftest import shared_path
from tests.torch_threads import one_torch_thread  # noqa: F401

KEYS = {
    "benchmark", "arch", "size", "batch_size", "device", "device_name", "amp", "dtype", "compile", "channels_last",
    "iters", "warmup", "ms_per_image", "images_per_s", "first_call_s", "peak_memory_mb", "peak_memory_kind",
    "max_abs_diff", "params", "torch_version", "threads", "config", "fast", "precision", "strip_rows",
    "cpu_ms_per_image", "machine", "keep_freed_memory",
}  # fmt: skip


def test_cli_json_report():
    args = ["bench", "fuse", "--size", "24x40", "--device", "cpu", "--iters", "2", "--warmup", "1", "--json"]
    result = CliRunner().invoke(build_cli(), args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert set(report) == KEYS
    assert report["size"] == [24, 40] and report["device"] == "cpu" and report["dtype"] == "float32"
    assert report["params"] == 59856 and report["peak_memory_kind"] == "process_peak_rss"
    assert report["ms_per_image"] > 0 and report["images_per_s"] == pytest.approx(1000 / report["ms_per_image"])
    assert report["peak_memory_mb"] > 0
    assert 0 <= report["max_abs_diff"] < 1e-5  # the fast pass, exact up to float32 rounding
    assert report["fast"] and report["config"] == "fast,fp32" and report["cpu_ms_per_image"] > 0
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["torch"] == report["torch_version"]


def test_eager_reference_and_an_interleaved_comparison():
    result = bench_fuse(size=(16, 24), fast=False, iters=2, warmup=1, compare="fast,strips=5")
    assert result["max_abs_diff"] == 0.0  # the fp32 eager configuration is the reference itself
    other = result["compare"]
    assert other["config"] == "fast,fp32,strips=5" and other["strip_rows"] == 5
    assert 0 <= other["max_abs_diff"] < 1e-5
    assert other["speedup"] == pytest.approx(other["ms_per_image"] / result["ms_per_image"])
    bad = CliRunner().invoke(build_cli(), ["bench", "fuse", "--size", "8x8", "--compare", "turbo"])
    assert bad.exit_code == 2 and "turbo" in bad.output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("eager", FuseConfig(fast=False)),
        ("fast,bf16,strips=32", FuseConfig(precision="bf16", strip_rows=32)),
        ("eager,channels-last,compile,fp16", FuseConfig(False, "fp16", True, True)),
    ],
)
def test_configuration_text(text, expected):
    assert FuseConfig.parse(text) == expected
    assert FuseConfig.parse(expected.label()) == expected


@pytest.mark.parametrize(
    ("precision", "dtype", "tolerance"), [("bf16", "bfloat16", 0.05), ("fp16", "float16", 2 / 255)]
)
def test_fast_paths_stay_close_to_fp32_eager(precision, dtype, tolerance):
    result = bench_fuse(
        size=(16, 24),
        fast=False,
        precision=precision,
        channels_last=True,
        batch_size=2,
        iters=1,
        warmup=1,
        checkpoint=shared_path("weights", "ReFusion_IVIF.pth"),
    )
    assert result["dtype"] == dtype and result["channels_last"] and result["batch_size"] == 2
    assert 0 < result["max_abs_diff"] < tolerance


def test_human_readable_output_and_size_errors():
    result = CliRunner().invoke(
        build_cli(),
        ["bench", "fuse", "--size", "16x16", "--iters", "1", "--eager", "--channels-last"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0 and "ms/image" in result.output and "[eager,fp32,channels-last]" in result.output
    assert parse_size("480x640") == (480, 640)
    assert parse_size("480") == (480, 480)  # one number: a square
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        parse_size("480x")
    bad = CliRunner().invoke(build_cli(), ["bench", "fuse", "--size", "big"])
    assert bad.exit_code == 2 and "HEIGHTxWIDTH" in bad.output
