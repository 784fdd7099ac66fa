"""Issue 17 item 5 and the small rows: one-line errors, --debug for the traceback, shapes, empty folders, devices."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from tdfusion_core.commands.cli import build_cli, main
from tdfusion_core.common.devices import DeviceError, pick_device
from tdfusion_core.common.io import list_images
from tdfusion_core.nets.refusion import FusionNet
from tdfusion_core.training.checkpoints import CheckpointError, save_model_checkpoint
from tests.trainer_utils import small_trainer


def test_fusion_checkpoint_of_another_width_names_the_tensors(tmp_path):
    small = {"dim": 8, "num_blocks": 1, "heads": 2}
    save_model_checkpoint(
        tmp_path / "w8.pt", fusion_net=FusionNet(**small), fusion_arch="refusion", fusion_config=small
    )
    from tdfusion_core.training.config import TrainConfig
    from tdfusion_core.training.trainer import MetaTrainer
    from tests.trainer_utils import BlobScenes

    config = TrainConfig(
        task="tiny-seg",
        task_options={"width": 4},
        fusion_options={"dim": 16, "num_blocks": 1, "heads": 2},
        fusion_checkpoint=str(tmp_path / "w8.pt"),
        epochs=1,
        progress=False,
    )
    with pytest.raises(
        CheckpointError, match=r"project_in_1\.weight: \(8, 1, 3, 3\) in the checkpoint, \(16, 1, 3, 3\)"
    ):
        MetaTrainer(config, train_set=BlobScenes(2))


def test_empty_dataset_folder_fails_data_check(tmp_path):
    (tmp_path / "train" / "ir").mkdir(parents=True)
    (tmp_path / "train" / "vi").mkdir(parents=True)
    result = CliRunner().invoke(build_cli(), ["data", "check", str(tmp_path)])
    assert result.exit_code == 1 and "no image pairs found" in result.output


def test_webp_images_are_listed(tmp_path):
    from PIL import Image

    Image.new("L", (8, 8)).save(tmp_path / "a.webp")
    assert list(list_images(tmp_path)) == ["a"]


def test_unknown_device_lists_what_exists():
    with pytest.raises(DeviceError, match=r"cuda:\d+.* not available on this machine \(it has: .*cpu"):
        pick_device("cuda:3") if not torch.cuda.is_available() else pick_device(f"cuda:{torch.cuda.device_count()}")
    with pytest.raises(DeviceError, match="not a torch device"):
        pick_device("gpu0")
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError):
        small_trainer(device="cuda:99")


def test_user_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TDFUSION_DEBUG", "0")  # recorded first, so the variable --debug sets is undone after the test
    args = [
        "fuse",
        "--ir",
        str(tmp_path / "none"),
        "--vis",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
        "--checkpoint",
        str(tmp_path / "x.pt"),
        "--quiet",
    ]
    with pytest.raises(SystemExit) as exited:
        main(args)
    err = capsys.readouterr().err
    assert exited.value.code == 1 and "image folder not found" in err and "Traceback" not in err

    # a user error raised outside a command's own handling is one line too, and --debug re-raises it
    monkeypatch.delenv("TDFUSION_DEBUG", raising=False)

    def boom(*_a, **_k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "secret"))

    monkeypatch.setattr("tdfusion_core.data.check.check_dataset", boom)
    with pytest.raises(SystemExit):
        main(["data", "check", str(tmp_path)])
    err = capsys.readouterr().err
    assert err.strip() == f"Error: Permission denied: {tmp_path / 'secret'} (--debug shows the traceback)"
    with pytest.raises(PermissionError):
        main(["--debug", "data", "check", str(tmp_path)])
    monkeypatch.delenv("TDFUSION_DEBUG", raising=False)
    # a command's own one-line error shows the underlying traceback with --debug
    with pytest.raises(SystemExit):
        main(["--debug", *args])
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.delenv("TDFUSION_DEBUG", raising=False)
