"""Issue 17 items 1, 5, 6, 7 for ``tdfusion fuse``: no partial or NaN output, no overwritten inputs, one-line errors."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from tdfusion_core.apps.fuse import fuse_images
from tdfusion_core.commands.cli import build_cli, main
from tdfusion_core.nets.refusion import FusionNet
from tdfusion_core.training.checkpoints import save_model_checkpoint
from tests.torch_threads import one_torch_thread  # noqa: F401

SMALL = {"dim": 8, "num_blocks": 1, "heads": 2}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    save_model_checkpoint(path, fusion_net=FusionNet(**SMALL), fusion_arch="refusion", fusion_config=SMALL)
    return path


def _pairs(root: Path, names=("a", "b"), size=(24, 16)) -> Path:
    rng = np.random.default_rng(0)
    for folder in ("ir", "vi"):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)).save(
                root / folder / f"{name}.png"
            )
    return root


def _fuse(args, root: Path, ckpt: Path, out: Path | None = None):
    out = out or root / "out"
    base = ["fuse", "--ir", str(root / "ir"), "--vis", str(root / "vi"), "--out", str(out), "--checkpoint", str(ckpt)]
    return CliRunner().invoke(build_cli(), [*base, "--quiet", *args])


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_full_disk_leaves_no_partial_image(tmp_path, ckpt, monkeypatch):
    root = _pairs(tmp_path)
    real_save = Image.Image.save

    def half_then_full(self, fp, format=None, **kw):
        real_save(self, fp, format=format, **kw)
        fp.truncate(fp.tell() // 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", half_then_full)
    result = _fuse([], root, ckpt)
    assert result.exit_code == 1
    assert "no space left on" in result.output and "a.png not written" in result.output
    assert _files(tmp_path / "out") == []  # neither a truncated a.png nor a temporary file


def test_output_inside_an_input_folder_is_refused(tmp_path, ckpt):
    root = _pairs(tmp_path / "data")
    (root / "ir").rename(root / "Gray")
    (root / "ir").mkdir()
    for name in ("a", "b"):
        (root / "ir" / f"{name}.png").write_bytes((root / "Gray" / f"{name}.png").read_bytes())
    before = {p: p.read_bytes() for p in (root / "Gray").iterdir()}
    # --vis ROOT/Gray --out ROOT --overwrite would write the fused images over the visible inputs
    result = CliRunner().invoke(
        build_cli(),
        [
            "fuse",
            "--ir",
            str(root / "ir"),
            "--vis",
            str(root / "Gray"),
            "--out",
            str(root),
            "--checkpoint",
            str(ckpt),
            "--overwrite",
            "--quiet",
        ],
    )
    assert result.exit_code == 1 and "is an input folder" in result.output
    assert {p: p.read_bytes() for p in (root / "Gray").iterdir()} == before


def test_leftover_empty_folders_do_not_block_a_rerun(tmp_path, ckpt):
    root = _pairs(tmp_path)
    (root / "out" / "Gray").mkdir(parents=True)
    result = _fuse([], root, ckpt)
    assert result.exit_code == 0, result.output
    assert _files(root / "out") == ["Gray/a.png", "Gray/b.png"]


def test_nan_checkpoint_and_nan_output_write_nothing(tmp_path, ckpt):
    root = _pairs(tmp_path)
    torch.manual_seed(0)
    net = FusionNet(**SMALL)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["project_in_1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    result = _fuse([], root, tmp_path / "nan.pth")
    assert result.exit_code == 1 and "non-finite values" in result.output and "project_in_1.weight" in result.output
    assert _files(root / "out") == []

    class NaNNet(nn.Module):
        def forward(self, x):
            return torch.full_like(x[:, :1], float("nan"))

    summary = fuse_images(root / "ir", root / "vi", root / "out", NaNNet(), progress=False)
    assert set(summary.failed) == {"a", "b"} and "NaN" in summary.failed["a"]
    assert _files(root / "out") == []


def test_nan_input_image_is_listed_and_not_fused(tmp_path, ckpt):
    root = _pairs(tmp_path)
    arr = np.full((16, 24), 0.5, dtype=np.float32)
    arr[2, 2] = np.nan
    (root / "ir" / "b.png").unlink()
    Image.fromarray(arr, mode="F").save(root / "ir" / "b.tif")
    result = _fuse([], root, ckpt)
    assert result.exit_code == 1 and "b.tif has 1 non-finite pixel" in result.output
    assert _files(root / "out") == ["Gray/a.png"]


def test_decompression_bomb_is_a_listed_problem(tmp_path, ckpt, monkeypatch):
    root = _pairs(tmp_path, size=(64, 48))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 48 > 2 x 1000: treated as a bomb
    result = _fuse([], root, ckpt)
    assert result.exit_code == 1 and "too large to decode safely" in result.output
    from tdfusion_core.data.check import check_split

    (root / "vi").rename(root / "vis")
    problems, _ = check_split(root, sources=("ir", "vis"))
    assert problems and all(p.kind == "unreadable" and "too large" in p.message for p in problems)


def test_duplicate_stems_bad_device_and_malicious_checkpoint_are_one_line(tmp_path, ckpt, capsys):
    root = _pairs(tmp_path)
    (root / "ir" / "a.jpg").write_bytes((root / "ir" / "a.png").read_bytes())
    result = _fuse([], root, ckpt)
    assert result.exit_code == 1 and "two images share the name 'a'" in result.output
    (root / "ir" / "a.jpg").unlink()

    result = _fuse(["--device", "cuda:7"], root, ckpt)
    assert result.exit_code == 1 and "cuda:7" in result.output and "cpu" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)

    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"fusion": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(SystemExit) as exited:
        main(
            [
                "fuse",
                "--ir",
                str(root / "ir"),
                "--vis",
                str(root / "vi"),
                "--out",
                str(root / "o2"),
                "--checkpoint",
                str(tmp_path / "evil.pt"),
                "--quiet",
            ]
        )
    err = capsys.readouterr().err
    assert exited.value.code == 1 and not marker.exists()
    assert "refused" in err and "never does that" in err and "weights_only=False" not in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
