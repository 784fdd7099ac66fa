"""``tdfusion bench suite --device cpu --quick`` runs end to end (so the GPU suite cannot rot) and skips plugin tasks
that are not installed with a line saying so; a failing figure is a row, and a stopped run keeps what it measured."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tdfusion_core.apps.bench.suite import TARGETS, run_suite
from tdfusion_core.commands.cli import build_cli
from tests.torch_threads import one_torch_thread  # noqa: F401


def test_quick_cpu_suite_writes_json_and_markdown_with_targets(tmp_path):
    args = ["bench", "suite", "--device", "cpu", "--quick", "--task", "tiny-seg", "--task", "no-such-task"]
    result = CliRunner().invoke(build_cli(), [*args, "--out", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "suite.json").read_text())
    rows = {r["figure"]: r for r in data["rows"]}
    assert data["quick"] and data["machine"]["cpu"] and data["machine"]["torch"]
    for name in ("fuse 480x640 fp32", "fuse 480x640 bf16", "fuse 1024x1280 fp32", "fuse 1024x1280 bf16"):
        assert rows[name]["value"] > 0
    assert rows["fuse 480x640 fp32"]["target"] == TARGETS["fuse 480x640 fp32"][0]
    for name in ("meta pair fp32, tiny-seg", "meta pair bf16, tiny-seg", "fusion step fp32, tiny-seg"):
        assert rows[name]["value"] > 0 and rows[name]["target"] is not None
    assert rows["peak memory fp32, tiny-seg"]["value"] > 0
    skipped = rows["meta pair fp32, no-such-task"]
    assert skipped["value"] is None and "SKIPPED no-such-task" in skipped["note"]
    assert "SKIPPED no-such-task" in result.output
    assert rows["1-process gloo trainer run"]["met"] is True
    table = (tmp_path / "suite.md").read_text()
    assert "| figure | value | target | met | note |" in table and "<= 6 ms" in table and "skipped" in table


def _fake_measurements(monkeypatch, fail_fuse: str | None = None, meta_error: type[BaseException] | None = None):
    """Instant stand-ins for the three measurements the suite calls, so its bookkeeping can be tested alone."""
    import tdfusion_core.apps.bench.fuse as fuse
    import tdfusion_core.apps.bench.meta as meta
    import tdfusion_core.apps.bench.scaling as scaling

    def bench_fuse(**kw):
        if fail_fuse is not None and kw["precision"] == fail_fuse:
            raise RuntimeError(f"no {fail_fuse} kernel here\nsecond line")
        return {"ms_per_image": 5.0, "max_abs_diff": 0.0, "first_call_s": 0.1}

    def bench_meta(**kw):
        if meta_error is not None:
            raise meta_error("stopped")
        jvp = {"meta_pair_ms": 150.0, "fusion_step_ms": 50.0, "peak_memory_mb": 100.0, "peak_memory_kind": "fake"}
        return {"modes": {"jvp": jvp}}

    monkeypatch.setattr(fuse, "bench_fuse", bench_fuse)
    monkeypatch.setattr(meta, "bench_meta", bench_meta)
    monkeypatch.setattr(scaling, "bench_scaling", lambda **kw: {"rows": [{"meta_step_ms": 1.0, "fusion_step_ms": 1.0}]})


def test_a_failing_figure_is_a_row_and_the_suite_goes_on(tmp_path, monkeypatch):
    _fake_measurements(monkeypatch, fail_fuse="bf16")
    result = run_suite(device="cpu", quick=False, tasks=("tiny-seg",), out_dir=tmp_path, log=lambda line: None)
    rows = {r["figure"]: r for r in result["rows"]}
    failed = rows["fuse 480x640 bf16 (failed)"]
    assert failed["value"] is None and failed["met"] is False
    assert failed["note"] == "failed: RuntimeError: no bf16 kernel here"
    assert rows["fuse 1024x1280 bf16 (failed)"]["met"] is False
    # everything after the failure was still measured, the compiled figures last
    assert rows["meta pair fp32, tiny-seg"]["value"] == 150.0 and rows["meta pair fp32, tiny-seg"]["met"] is True
    assert rows["1-process gloo trainer run"]["met"] is True
    assert [r["figure"] for r in result["rows"]][-2:] == ["fuse 480x640 compile", "fuse 1024x1280 compile"]
    saved = json.loads((tmp_path / "suite.json").read_text())
    assert saved["complete"] is True and saved["rows"] == result["rows"]
    assert "| fuse 480x640 bf16 (failed) | failed |" in (tmp_path / "suite.md").read_text()


def test_a_stopped_run_keeps_what_it_measured(tmp_path, monkeypatch):
    _fake_measurements(monkeypatch, meta_error=KeyboardInterrupt)  # as a time limit would stop it: not caught
    with pytest.raises(KeyboardInterrupt):
        run_suite(device="cpu", quick=False, tasks=("tiny-seg",), out_dir=tmp_path, log=lambda line: None)
    saved = json.loads((tmp_path / "suite.json").read_text())
    assert saved["complete"] is False
    assert [r["figure"] for r in saved["rows"]] == [
        "fuse 480x640 fp32", "fuse 1024x1280 fp32", "fuse 480x640 bf16", "fuse 1024x1280 bf16"
    ]  # fmt: skip
    assert "**incomplete**" in (tmp_path / "suite.md").read_text()
