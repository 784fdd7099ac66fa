"""The built-in demo in its quick version: runs end to end and writes a complete report."""

import json

from click.testing import CliRunner

from tdfusion_core.commands.cli import build_cli


def test_quick_demo_writes_report(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(build_cli(), ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "report:" in result.output
    report = (out / "report.md").read_text()
    # the demo is a seeded experiment now: the oracle is a reference row, TDFusion and fixed ½ have several seeds
    methods = ("TDFusion", "Fixed ½", "Infrared only", "Visible only", "Oracle (upper reference)")
    for method in methods:
        assert method in report
    assert "warm objects, night" in report and "markings" in report and "sources swapped" in report
    assert "## Verdict" in report and "95 %" in report
    assert "from ½" in report  # how far G moved, so that a preference score is not read as learning
    results = json.loads((out / "results.json").read_text())
    assert set(results["results"]) == set(methods)
    for row in results["results"].values():
        assert 0.0 <= row["mIoU"] <= 1.0
    assert results["summary"]["seeds"] == [0, 1]
    assert results["summary"]["methods"]["TDFusion"]["mIoU"]["n"] == 2
    assert results["summary"]["methods"]["Infrared only"]["mIoU"]["n"] == 1  # references once
    assert results["verdict"] in ("ahead", "behind", "not distinguishable")
    assert 0.0 <= results["summary"]["methods"]["TDFusion"]["infrared_pref"]["mean"] <= 1.0
    assert results["cpu_seconds"] > 0
    for name in ("weights.png", "weight_grid.png", "fused.png"):
        assert (out / name).stat().st_size > 1000
    assert (out / "runs" / "TDFusion" / "seed0" / "model.pt").is_file()
    # a second run refuses to overwrite
    again = CliRunner().invoke(build_cli(), ["demo", "--quick", "--out", str(out)])
    assert again.exit_code != 0 and "--overwrite" in again.output


def test_movement_note_says_when_the_preference_score_means_nothing():
    from tdfusion_core.apps.demo import movement_note

    near = {"warm objects, night": {"given": 0.504, "swapped": 0.504}, "markings": {"given": 0.5, "swapped": None}}
    assert "barely moved" in movement_note(near) and "0.004" in movement_note(near)
    far = {"warm objects, night": {"given": 0.71, "swapped": 0.70}}
    assert "barely" not in movement_note(far) and "0.210" in movement_note(far)
    assert movement_note({}) == ""
