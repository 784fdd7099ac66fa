"""Issue 17 item 6: a config file can never allow code execution from a checkpoint; only the command line can."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tdfusion_core.commands.cli import build_cli
from tdfusion_core.training.trust import refuse_trust_from_file, with_trust, without_trust


def test_config_file_setting_trust_is_refused_before_anything_runs(tmp_path):
    config = tmp_path / "shared.yaml"
    config.write_text("task: tiny-seg\ntask_options:\n  trust_checkpoint: true\n")
    result = CliRunner().invoke(build_cli(), ["train", "--config", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "cannot allow code execution" in result.output and "--trust-checkpoint" in result.output
    assert not (tmp_path / "run").exists()


def test_trust_in_any_task_of_a_multitask_file_is_refused():
    values = {"tasks": [{"name": "a", "options": {}}, {"name": "b", "options": {"trust_checkpoint": False}}]}
    with pytest.raises(ValueError, match=r"tasks\[1\]\.options\.trust_checkpoint"):
        refuse_trust_from_file(values, "x.yaml")
    refuse_trust_from_file({"task_options": {"width": 4}}, "x.yaml")  # nothing to refuse


def test_flag_sets_and_saved_config_drops_trust():
    trusted = with_trust({"task_options": {"width": 4}, "tasks": [{"name": "a", "options": {}}]})
    assert trusted["task_options"] == {"width": 4, "trust_checkpoint": True}
    assert trusted["tasks"][0]["options"] == {"trust_checkpoint": True}
    dropped = without_trust(trusted)
    assert dropped["task_options"] == {"width": 4} and dropped["tasks"][0]["options"] == {}


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("where", ["task", "model", "resume"])
def test_malicious_pickle_never_runs_and_the_refusal_explains(tmp_path, where):
    import torch

    from tdfusion_core.plugin.registry import get_task
    from tdfusion_core.training.checkpoints import CheckpointError, load_model_checkpoint
    from tdfusion_core.training.run_files import ResumeError, load_training_state

    marker = tmp_path / "payload-ran"
    path = tmp_path / "checkpoints" / "last.pt"
    path.parent.mkdir()
    torch.save({"format": "tdfusion-train-state", "x": _Payload(str(marker))}, path)
    with pytest.raises((CheckpointError, ResumeError)) as refused:
        if where == "task":
            task = get_task("tiny-seg")
            task.load_checkpoint(task.network, path)
        elif where == "model":
            load_model_checkpoint(path)
        else:
            load_training_state(path)
    message = str(refused.value)
    assert not marker.exists()
    assert "only load by executing code" in message and "(io.open)" in message
    assert "weights_only=False" not in message and "safe_globals" in message
