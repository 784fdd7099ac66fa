"""One precision policy (tdfusion_core.common.precision): the names, autocast, the replaced --amp options, and fuse's
loss generator computing in the chosen precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tdfusion_core.apps.fuse import Fuser
from tdfusion_core.commands.cli import build_cli
from tdfusion_core.common.precision import (
    PRECISION_NAMES,
    autocast,
    autocast_dtype,
    precision_dtype,
    training_precision,
)
from tdfusion_core.nets.refusion_fast import PRECISIONS


def test_names_and_dtypes():
    assert [precision_dtype(n) for n in PRECISION_NAMES] == [torch.float32, torch.bfloat16, torch.float16]
    assert autocast_dtype("fp32") is None and autocast_dtype("bf16") is torch.bfloat16
    assert PRECISIONS == {n: precision_dtype(n) for n in PRECISION_NAMES}  # the fast pass reads the same table
    assert training_precision(True) == "bf16" and training_precision(False) == "fp32"
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16, not 'float16'"):
        precision_dtype("float16")


def test_autocast_runs_a_matmul_in_the_dtype_or_leaves_float32():
    a = torch.rand(4, 4)
    with autocast("cpu", torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
    with autocast("cpu", None):
        assert (a @ a).dtype == torch.float32


@pytest.mark.parametrize(
    ("command", "args", "message"),
    [
        (["fuse"], ["--amp"], "--amp was replaced by --precision bf16"),
        (["fuse"], ["--amp-dtype", "float16"], "--amp-dtype was replaced by --precision"),
        (["bench", "fuse"], ["--amp"], "--amp was replaced by --precision bf16"),
    ],
)
def test_the_replaced_amp_options_stop_with_one_line_naming_precision(tmp_path, command, args, message):
    for name in ("ir", "vi"):
        (tmp_path / name).mkdir()
    fuse_args = ["--ir", str(tmp_path / "ir"), "--vis", str(tmp_path / "vi"), "--out", str(tmp_path / "out")]
    extra = [*fuse_args, "--checkpoint", str(tmp_path / "none.pt")] if command == ["fuse"] else ["--iters", "1"]
    result = CliRunner().invoke(build_cli(), [*command, *extra, *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "--amp" not in CliRunner().invoke(build_cli(), [*command, "--help"]).output  # hidden


class _Weights(torch.nn.Module):
    """A loss generator that records the dtype its convolution computed in."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 2, 1)
        self.dtypes: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        self.dtypes.append(out.dtype)
        return torch.softmax(out, dim=1)


class _Mean(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1, keepdim=True)


@pytest.mark.parametrize(("precision", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_fuser_runs_the_loss_generator_in_the_precision(precision, dtype):
    fuser = Fuser(_Mean(), precision=precision, fast=False)
    generator = _Weights()
    fuser.loss_generator = generator
    image = Image.fromarray(np.full((8, 8), 100, np.uint8))
    result = fuser(image, image, weights=True)
    assert generator.dtypes == [dtype]
    assert result.weights is not None and result.weights.dtype == torch.float32
