"""The built-in demo in its quick version: runs end to end and writes a complete report."""

import json

from click.testing import CliRunner

from tdfusion_core.cli import build_cli


def test_quick_demo_writes_report(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(build_cli(), ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "report:" in result.output
    report = (out / "report.md").read_text()
    for method in ("TDFusion", "Fixed ½", "Infrared only", "Visible only"):
        assert method in report
    assert "warm objects, night" in report and "markings" in report
    results = json.loads((out / "results.json").read_text())
    assert set(results["results"]) == {"TDFusion", "Fixed ½", "Infrared only", "Visible only"}
    for row in results["results"].values():
        assert 0.0 <= row["mIoU"] <= 1.0
    for name in ("weights.png", "weight_grid.png", "fused.png"):
        assert (out / name).stat().st_size > 1000
    assert (out / "tdfusion" / "model.pt").is_file()
    # a second run refuses to overwrite
    again = CliRunner().invoke(build_cli(), ["demo", "--quick", "--out", str(out)])
    assert again.exit_code != 0 and "--overwrite" in again.output
