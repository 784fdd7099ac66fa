"""Settings: YAML and --set read strictly, one-line errors, task options checked, the reference page up to date,
devices (auto) and run directories (runs/train2)."""

from __future__ import annotations

import math

import pytest
import torch
from click.testing import CliRunner

from tdfusion_core.commands.cli import build_cli
from tdfusion_core.commands.train import next_run_dir, resolve_config
from tdfusion_core.common.devices import available_devices, pick_device
from tdfusion_core.kernel.task import Task
from tdfusion_core.plugin import registry
from tdfusion_core.training.config import TrainConfig
from tdfusion_core.training.config_docs import render
from tdfusion_core.training.config_io import ConfigError, apply_override, check_task_options, load_yaml
from tests.conftest import REPO


def _from(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return TrainConfig.from_yaml(path)


def test_yaml_numbers_written_with_an_exponent_are_numbers(tmp_path):
    config = _from(tmp_path, "lr_fusion: 1e-4\nlr_task: 2.5E-3\nalpha: 1\nepochs: 3\n")
    assert config.lr_fusion == pytest.approx(1e-4) and isinstance(config.lr_fusion, float)
    assert config.lr_task == pytest.approx(2.5e-3)
    assert config.alpha == 1.0 and isinstance(config.alpha, float)  # an int where a float is expected is widened
    assert load_yaml("a: 1e3\nb: 12\nc: '1e-4'\n") == {"a": 1000.0, "b": 12, "c": "1e-4"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("epochz: 3\n", r"unknown key 'epochz' \(did you mean 'epochs'\?\)"),
        ("switch: 'false'\n", r"switch must be true/false, got 'false' \(str\)"),
        ("epochs: 3\nseed: 1\nepochs: 4\n", r"line 3: duplicate key 'epochs' \(first given on line 1\)"),
        ("epochs: [1,\n", r"YAML syntax error at line 2"),
        ("epochs: 0\n", r"epochs must be a finite number > 0, got 0"),
        ("seed: 1.5\n", r"seed must be an integer, got 1.5"),
        ("lr_generator: .inf\n", r"lr_generator must be a finite number > 0, got inf"),
        ("lr_fusion: .nan\n", r"lr_fusion must be a finite number > 0"),
        ("lr_task: -1e-4\n", r"lr_task must be a finite number > 0"),
        ("lr_task: '1e-4'\n", r"lr_task must be a number, got '1e-4' \(str\)"),
        ("meta_mode: fast\n", r"meta_mode must be 'jvp' or 'double-backward' or 'finite-difference'"),
        ("- epochs\n", r"must hold a mapping of settings"),
    ],
)
def test_config_file_errors_are_one_line_and_name_the_file(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=expected) as info:
        _from(tmp_path, text)
    message = str(info.value)
    assert "\n" not in message and "c.yaml" in message


def test_missing_config_file():
    with pytest.raises(FileNotFoundError, match=r"config file not found: nowhere\.yaml"):
        TrainConfig.from_yaml("nowhere.yaml")


def test_dotted_overrides_set_one_entry_and_read_numbers():
    values = {"task_options": {"width": 4}}
    apply_override(values, "task_options.num_classes=1")
    apply_override(values, "lr-fusion=1e-4")
    apply_override(values, "data_options.size=[32, 40]")
    assert values == {
        "task_options": {"width": 4, "num_classes": 1},
        "lr_fusion": 1e-4,
        "data_options": {"size": [32, 40]},
    }
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_override(values, "epochs")
    with pytest.raises(ConfigError, match="lr_fusion is float, not a mapping"):
        apply_override(values, "lr_fusion.x=1")


def test_command_line_precedence(tmp_path):
    (tmp_path / "run.yaml").write_text("epochs: 5\ntask_options: {width: 4}\nlr_fusion: 1e-3\n")
    config = resolve_config(
        tmp_path / "run.yaml", None, {"epochs": 7}, ("task_options.num_classes=2", "lr_fusion=2e-4")
    )
    assert config.epochs == 7 and config.lr_fusion == pytest.approx(2e-4)
    assert config.task_options == {"width": 4, "num_classes": 2}


def test_task_options_are_checked_against_what_the_task_accepts():
    tiny = registry.lookup("task", "tiny-seg")
    check_task_options("tiny-seg", tiny, {"num_classes": 3, "width": 8, "input_kind": "luminance"})
    with pytest.raises(ConfigError, match=r"no option 'num_clases' \(did you mean 'num_classes'\?\)"):
        check_task_options("tiny-seg", tiny, {"num_clases": 1})

    class FreeForm(Task):  # declares no config_keys: any option is accepted, nothing can be checked
        def build_network(self):
            return torch.nn.Identity()

        def compute_loss(self, network, images, targets):
            return images.mean()

        def evaluate(self, network, batches):
            return {}

    class Declared(FreeForm):
        config_keys = ("depth",)

        def __init__(self, heads: int = 1, **config):
            super().__init__(**config)

    assert FreeForm.accepted_options() is None
    assert Declared.accepted_options() == {"heads", "depth", "num_classes", "checkpoint", "lr"}
    check_task_options("free", FreeForm, {"anything": 1})


def test_train_command_config_errors_are_one_line_without_traceback(tmp_path):
    runner = CliRunner()
    cli = build_cli()
    (tmp_path / "bad.yaml").write_text("lr_fusion: 1e-4\nswitch: 'false'\n")
    cases = [
        (["--config", str(tmp_path / "bad.yaml")], "switch must be true/false"),
        (["--config", str(tmp_path / "none.yaml")], "config file not found"),
        (["--set", "task_options={num_clases: 1}"], "did you mean 'num_classes'"),
        (["--set", "epochs=0"], "epochs must be a finite number > 0"),
        (["--set", "lr_generator=.inf"], "lr_generator must be a finite number > 0"),
        (["--set", "epochz=1"], "did you mean 'epochs'"),
    ]
    for args, expected in cases:
        result = runner.invoke(cli, ["train", "--out", str(tmp_path / "run"), *args])
        assert result.exit_code == 1, (args, result.output)
        assert expected in result.output and "Traceback" not in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "run").exists()  # nothing was started


def test_config_reference_page_is_generated_and_up_to_date():
    page = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    assert page == render(), "docs/config.md is stale: run `python -m tdfusion_core.training.config_docs`"
    import attrs

    for field in attrs.fields(TrainConfig):
        assert f"| `{field.name}` |" in page


def test_device_auto_is_the_default_and_unknown_devices_are_refused():
    assert TrainConfig().device == "auto"
    best = available_devices()[0]
    assert pick_device("auto") == torch.device(best) == pick_device(None)
    assert pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device 'cuda' is not available on this machine \(it has: .*cpu\)"):
            pick_device("cuda")
    with pytest.raises(ValueError, match="not a torch device"):
        pick_device("gpu0")


def test_every_command_defaults_to_device_auto():
    cli = build_cli()
    for name in ("fuse", "eval", "downstream", "val", "bench"):
        command = cli.commands[name]
        commands = command.commands.values() if hasattr(command, "commands") else [command]
        for cmd in commands:
            if cmd.name == "scaling":  # names its process-group backend by device (gloo or NCCL): stays explicit
                continue
            if cmd.name == "suite":  # the GPU suite: its targets are GPU figures; the CPU run is an explicit --quick
                continue
            for param in cmd.params:
                if param.name == "device":
                    assert param.default == "auto", f"{name} {cmd.name}"


def test_out_directory_auto_increments(tmp_path):
    base = tmp_path / "train"
    assert next_run_dir(base) == base
    base.mkdir()
    assert next_run_dir(base) == base  # empty: reused
    (base / "config.yaml").write_text("{}")
    assert next_run_dir(base) == tmp_path / "train2"
    (tmp_path / "train2").mkdir()
    (tmp_path / "train2" / "x").write_text("")
    assert next_run_dir(base) == tmp_path / "train3"


def test_finite_positive_checks_python_construction_too():
    with pytest.raises(ValueError, match="lr_fusion must be a finite number > 0, got nan"):
        TrainConfig(lr_fusion=math.nan)
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0"):
        TrainConfig(alpha=math.inf)
