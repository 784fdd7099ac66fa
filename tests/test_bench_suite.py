"""``tdfusion bench suite --device cpu --quick`` runs end to end (so the GPU suite cannot rot) and skips plugin tasks
that are not installed with a line saying so."""

from __future__ import annotations

import json

from click.testing import CliRunner

from tdfusion_core.apps.bench.suite import TARGETS
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
