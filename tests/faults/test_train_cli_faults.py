"""``tdfusion train`` end to end: a damaged last.pt, a lost config.yaml, an architecture change on --resume."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tdfusion_core.commands.cli import build_cli

TINY = [
    "--data", "synthetic", "--epochs", "1", "--meta-steps", "0", "--fusion-steps", "1",
    "--set", "data_options={n: 2, size: [32, 40]}", "--set", "crop_size=16", "--set", "task_options={width: 4}",
    "--set", "fusion_options={dim: 8, num_blocks: 1, heads: 2}",
    "--set", "loss_generator_options={dim: 8, num_blocks: 1, heads: 2}", "--set", "progress=false",
    "--set", "log_images=false",
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    result = CliRunner().invoke(build_cli(), ["train", *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(build_cli(), ["train", "--resume", "--epochs", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_resume_without_config_yaml_uses_the_checkpoints_settings(run):
    (run / "config.yaml").unlink()
    result = CliRunner().invoke(build_cli(), ["train", "--resume", "--epochs", "3", "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert "done: 3 epochs" in result.output


def test_architecture_change_on_resume_is_one_line(run):
    args = ["train", "--resume", "--epochs", "4", "--out", str(run), "--set", "task_options={width: 8}"]
    result = CliRunner().invoke(build_cli(), args)
    assert result.exit_code == 1 and "task_options" in result.output and "Traceback" not in result.output


def test_damaged_checkpoints_are_one_line(run):
    ckpt = run / "checkpoints"
    (ckpt / "last.pt").write_bytes(b"")
    (ckpt / "last.prev.pt").write_bytes(b"")
    result = CliRunner().invoke(build_cli(), ["train", "--resume", "--epochs", "5", "--out", str(run)])
    assert result.exit_code == 1
    assert "no readable checkpoint" in result.output and "is empty (0 bytes)" in result.output
