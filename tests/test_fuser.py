"""The public one-call fuser (issue 16.4): same output as ``tdfusion fuse`` for paths, PIL images, arrays, tensors;
tiling (issue 17.7): exact for a local network, close to untiled for ReFusion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

import tdfusion_core
from tdfusion_core.apps.fuse import FusionInputError, run_tiled
from tdfusion_core.commands.cli import build_cli
from tests.conftest import write_small_checkpoint
from tests.torch_threads import one_torch_thread  # noqa: F401


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_small_checkpoint(tmp_path_factory.mktemp("ckpt") / "small.pt")


def _pair(folder: Path, name: str = "a", size=(37, 29), seed=0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    (folder / "ir").mkdir(parents=True, exist_ok=True)
    (folder / "vi").mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)).save(folder / "ir" / f"{name}.png")
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / "vi" / f"{name}.png")
    return folder / "ir" / f"{name}.png", folder / "vi" / f"{name}.png"


def test_fuser_equals_tdfusion_fuse_for_every_input_kind(tmp_path, checkpoint):
    ir, vis = _pair(tmp_path)
    result = CliRunner().invoke(
        build_cli(),
        [
            "fuse",
            "--ir",
            str(ir.parent),
            "--vis",
            str(vis.parent),
            "--out",
            str(tmp_path / "out"),
            "--checkpoint",
            str(checkpoint),
            "--quiet",
            "--save-weights",
        ],
    )
    assert result.exit_code == 0, result.output
    cli_rgb = np.asarray(Image.open(tmp_path / "out" / "RGB" / "a.png"))
    cli_gray = np.asarray(Image.open(tmp_path / "out" / "Gray" / "a.png"))

    fuser = tdfusion_core.Fuser(checkpoint)
    ir_pil, vis_pil = Image.open(ir), Image.open(vis)
    ir_np, vis_np = np.asarray(ir_pil), np.asarray(vis_pil)
    inputs = {
        "paths": (ir, vis),
        "str": (str(ir), str(vis)),
        "pil": (ir_pil, vis_pil),
        "uint8 arrays": (ir_np, vis_np),
        "float arrays": (ir_np / 255.0, vis_np / 255.0),
        "tensors": (torch.from_numpy(ir_np / 255.0).float(), torch.from_numpy(vis_np / 255.0).permute(2, 0, 1)),
    }
    for kind, (a, b) in inputs.items():
        fused = fuser(a, b)
        assert np.array_equal(np.asarray(fused.image()), cli_rgb), kind
        assert np.array_equal(np.asarray(Image.fromarray(tdfusion_core.apps.fuse.to_uint8(fused.gray))), cli_gray), kind
    one_call = tdfusion_core.fuse_pair(ir, vis, checkpoint)
    assert np.array_equal(np.asarray(one_call.image()), cli_rgb)
    one_call.save(tmp_path / "saved.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "saved.png")), cli_rgb)
    assert fuser(ir, vis, weights=True).weights.shape == (2, 29, 37)


def test_fuser_refuses_bad_inputs_with_one_line(checkpoint):
    fuser = tdfusion_core.Fuser(checkpoint)
    with pytest.raises(FusionInputError, match="non-finite"):
        fuser(np.full((8, 8), np.nan, dtype=np.float32), np.zeros((8, 8), dtype=np.float32))
    with pytest.raises(FusionInputError, match="resize=True"):
        fuser(np.zeros((8, 8), np.uint8), np.zeros((8, 9), np.uint8))
    assert fuser(np.zeros((8, 8), np.uint8), np.zeros((8, 9), np.uint8), resize=True).gray.shape == (1, 8, 8)
    with pytest.raises(FusionInputError, match=r"\(H, W\) or \(H, W, 3\)"):
        fuser(np.zeros((2, 8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8))


class LocalNet(nn.Module):
    """Two 3x3 convolutions: receptive field 5x5, so tiles overlapping by more than 2 pixels give the exact result."""

    size_multiple = 8

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.a, self.b = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


def test_tiling_is_exact_for_a_local_network_away_from_padding():
    x = torch.rand(2, 2, 70, 90)
    net = LocalNet()
    whole = run_tiled(net, x, 1, tile=None)
    tiled = run_tiled(net, x, 1, tile=32, overlap=8, max_pixels=None)
    assert tiled.shape == whole.shape
    # inside the image, away from the zero padding each tile's border adds, tiles agree with the whole image
    assert torch.allclose(tiled[..., 2:-2, 2:-2], whole[..., 2:-2, 2:-2], atol=1e-5)
    assert torch.allclose(
        run_tiled(net, x, 8, tile=40, overlap=16, max_pixels=None)[..., 3:-3, 3:-3], whole[..., 3:-3, 3:-3], atol=0.05
    )


def test_tiling_bounds_what_one_network_call_sees():
    seen: list[tuple[int, ...]] = []

    class Spy(nn.Module):
        size_multiple = 8

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(tuple(x.shape))
            return x.mean(dim=1, keepdim=True)

    x = torch.rand(1, 2, 300, 500)
    out = run_tiled(Spy(), x, 8, tile=128, overlap=16, max_pixels=None)
    assert max(h * w for *_, h, w in seen) <= 128 * 128 and len(seen) > 1
    assert torch.allclose(out, x.mean(dim=1, keepdim=True), atol=1e-6)  # blending weights sum to one
    seen.clear()
    run_tiled(Spy(), x, 8, tile=128, overlap=16, max_pixels=300 * 500)  # fits the pixel budget: one pass
    assert len(seen) == 1
