"""``fuse_images`` and ``tdfusion fuse``: real pairs with the published weights, colour, padding, bad input."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from tdfusion_core import fuse_images
from tdfusion_core.apps.fuse import FusionInputError, ImageSizeMismatchError
from tdfusion_core.commands.cli import build_cli
from tdfusion_core.common.colour import colormap
from tdfusion_core.training.checkpoints import load_model_checkpoint
from tests.conftest import shared_path, write_small_checkpoint
from tests.torch_threads import one_torch_thread  # noqa: F401

WEIGHTS = ("weights", "ReFusion_IVIF.pth")


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of ``(H, W, 3)`` in [0, 255] (written out here, independent of tdfusion_core.common.colour)."""
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.float64)


def copy_pairs(dest: Path, dataset: str, split: str, names: list[str], scale: int = 1) -> tuple[Path, Path]:
    """Copy real pairs into ``dest/{ir,vi}``, optionally down-sampled by ``scale`` to keep the test fast."""
    for folder in ("ir", "vi"):
        (dest / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            src = shared_path("data", dataset, split, folder, f"{name}.png")
            if scale == 1:
                shutil.copy(src, dest / folder / src.name)
            else:
                with Image.open(src) as im:
                    im.resize((im.width // scale, im.height // scale), Image.BICUBIC).save(dest / folder / src.name)
    return dest / "ir", dest / "vi"


class MeanFusion(nn.Module):
    """A non-ReFusion fusion net: the mean of the sources; pads to multiples of 8 and records what it saw."""

    size_multiple = 8

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape))
        return x.mean(dim=1, keepdim=True) * self.scale


def write_gray(path: Path, size: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0]), dtype=np.uint8)
    Image.fromarray(arr).save(path)


def write_colour(path: Path, size: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


@pytest.fixture
def small_checkpoint(tmp_path_factory) -> Path:
    """A tdfusion checkpoint with a small random fusion network and loss generator (fast on the CPU)."""
    return write_small_checkpoint(tmp_path_factory.mktemp("ckpt") / "small.pt")


# ------------------------------------------------------------------------------------- real data, published weights


def test_roadscene_and_llvip_with_published_weights(tmp_path):
    road_ir, road_vi = copy_pairs(tmp_path / "road", "RoadScene", "train", ["FLIR_07555", "FLIR_04722"], scale=3)
    llvip_ir, llvip_vi = copy_pairs(tmp_path / "llvip", "LLVIP", "val", ["010041", "010046"], scale=4)
    ckpt = load_model_checkpoint(shared_path(*WEIGHTS))

    for ir_dir, vi_dir, out in (
        (road_ir, road_vi, tmp_path / "out_road"),
        (llvip_ir, llvip_vi, tmp_path / "out_llvip"),
    ):
        summary = fuse_images(ir_dir, vi_dir, out, ckpt, progress=False)
        names = sorted(p.stem for p in ir_dir.iterdir())
        assert summary.ok and summary.fused == names and summary.rgb == names
        for name in names:
            ir = load(ir_dir / f"{name}.png")
            vis = load(vi_dir / f"{name}.png")
            gray = load(out / "Gray" / f"{name}.png")
            rgb = load(out / "RGB" / f"{name}.png")
            assert gray.shape == ir.shape and rgb.shape == (*ir.shape, 3)
            # The gray result is the network on (IR, visible luma), stretched to [0, 255] as the reference does.
            x = torch.from_numpy(np.stack([ir, luma(vis)]) / 255.0).float()[None]
            with torch.inference_mode():
                y = ckpt.fusion_net(x)[0, 0].numpy().astype(np.float64)
            expected = np.round((y - y.min()) / (y.max() - y.min()) * 255)
            assert np.abs(gray - expected).max() <= 1
            assert gray.min() == 0 and gray.max() == 255
            # The colour result carries the fused luminance and the visible image's colour (the IR is gray).
            assert np.abs(luma(rgb) - gray).mean() < 1.0
            vis_cb, out_cb = vis[..., 2] - luma(vis), rgb[..., 2] - luma(rgb)
            assert np.corrcoef(vis_cb.ravel(), out_cb.ravel())[0, 1] > 0.9


# -------------------------------------------------------------------------------------- pipeline, any fusion module


def test_any_module_padding_crop_and_exact_values(tmp_path):
    write_gray(tmp_path / "ir" / "a.png", (21, 13), 0)
    write_gray(tmp_path / "vi" / "a.png", (21, 13), 1)
    net = MeanFusion()
    summary = fuse_images(tmp_path / "ir", tmp_path / "vi", tmp_path / "out", net, normalize=False, progress=False)
    assert net.seen == [(1, 2, 16, 24)]  # padded up to multiples of 8
    got = load(tmp_path / "out" / "Gray" / "a.png")
    mean = (load(tmp_path / "ir" / "a.png") + load(tmp_path / "vi" / "a.png")) / 2
    assert got.shape == (13, 21)
    assert np.abs(got - mean).max() <= 0.5 + 1e-9
    # Gray in, gray out: no RGB folder.
    assert summary.rgb == [] and not (tmp_path / "out" / "RGB").exists()


def test_batches_group_pairs_of_one_size_and_match_single_runs(tmp_path):
    for i, size in enumerate([(16, 12), (16, 12), (16, 12), (20, 12)]):
        write_gray(tmp_path / "ir" / f"p{i}.png", size, 10 + i)
        write_colour(tmp_path / "vi" / f"p{i}.png", size, 20 + i)
    net = MeanFusion()
    fuse_images(tmp_path / "ir", tmp_path / "vi", tmp_path / "b2", net, batch_size=2, progress=False)
    assert [s[0] for s in net.seen] == [2, 1, 1]
    fuse_images(tmp_path / "ir", tmp_path / "vi", tmp_path / "b1", MeanFusion(), batch_size=1, progress=False)
    for i in range(4):
        for sub in ("Gray", "RGB"):
            assert np.array_equal(load(tmp_path / "b2" / sub / f"p{i}.png"), load(tmp_path / "b1" / sub / f"p{i}.png"))


def test_both_sources_in_colour_mix_their_chroma(tmp_path):
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 200
    gray = np.full((8, 8, 3), 90, np.uint8)
    for folder, arr in (("ir", gray), ("vi", red)):
        (tmp_path / folder).mkdir()
        Image.fromarray(arr).save(tmp_path / folder / "c.png")
    fuse_images(tmp_path / "ir", tmp_path / "vi", tmp_path / "out", MeanFusion(), normalize=False, progress=False)
    rgb = load(tmp_path / "out" / "RGB" / "c.png")
    assert rgb[..., 0].mean() > rgb[..., 1].mean() + 50  # the visible image's red survives a gray IR
    # IR in colour (blue), visible gray: the IR chroma passes through.
    blue = np.zeros((8, 8, 3), np.uint8)
    blue[..., 2] = 200
    Image.fromarray(blue).save(tmp_path / "ir" / "c.png")
    Image.fromarray(gray).save(tmp_path / "vi" / "c.png")
    fuse_images(tmp_path / "ir", tmp_path / "vi", tmp_path / "out2", MeanFusion(), normalize=False, progress=False)
    rgb = load(tmp_path / "out2" / "RGB" / "c.png")
    assert rgb[..., 2].mean() > rgb[..., 0].mean() + 50


def test_weight_maps_are_the_loss_generator_output_colour_mapped(tmp_path, small_checkpoint):
    write_gray(tmp_path / "ir" / "w.png", (12, 10), 3)
    write_colour(tmp_path / "vi" / "w.png", (12, 10), 4)
    summary = fuse_images(
        tmp_path / "ir", tmp_path / "vi", tmp_path / "out", small_checkpoint, save_weights=True, progress=False
    )
    assert summary.ok
    lossgen = load_model_checkpoint(small_checkpoint).loss_generator
    assert lossgen is not None
    x = torch.from_numpy(
        np.stack([load(tmp_path / "ir" / "w.png"), luma(load(tmp_path / "vi" / "w.png"))]) / 255.0
    ).float()[None]
    with torch.inference_mode():
        w = lossgen(x)[0].numpy()
    for k, source in enumerate(("ir", "vis")):
        got = load(tmp_path / "out" / "Weights" / f"w_{source}.png")
        assert got.shape == (10, 12, 3)
        assert np.abs(got - colormap(w[k]) * 255).max() <= 1.5


def test_colormap_is_matplotlibs_viridis_without_needing_matplotlib(monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    values = np.arange(256) / 255
    viridis = matplotlib.colormaps["viridis"](values)[:, :3]
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    ours = colormap(values[None])
    assert ours.shape == (1, 256, 3)
    assert np.abs(ours[0] - viridis).max() < 0.01
    assert np.allclose(ours[0, [0, -1]], viridis[[0, -1]], atol=1e-6)


# -------------------------------------------------------------------------------------------------------- bad input


def test_unpaired_names_are_listed_and_the_rest_fused(tmp_path):
    write_gray(tmp_path / "ir" / "both.png", (8, 8), 0)
    write_gray(tmp_path / "vi" / "both.jpg", (8, 8), 1)  # stems pair, suffixes may differ
    write_gray(tmp_path / "ir" / "only_ir.png", (8, 8), 2)
    write_gray(tmp_path / "vi" / "only_vis.png", (8, 8), 3)
    summary = fuse_images(tmp_path / "ir", tmp_path / "vi", tmp_path / "out", MeanFusion(), progress=False)
    assert summary.fused == ["both"] and summary.ok
    assert summary.unpaired_ir == ["only_ir.png"] and summary.unpaired_vis == ["only_vis.png"]
    assert "only_ir.png" in summary.format() and "only_vis.png" in summary.format()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FusionInputError, match="no image"):
        fuse_images(tmp_path / "ir", tmp_path / "empty", tmp_path / "out2", MeanFusion())


def test_size_mismatch_names_both_files_or_resamples(tmp_path):
    write_gray(tmp_path / "ir" / "s.png", (16, 12), 0)
    write_colour(tmp_path / "vi" / "s.png", (32, 24), 1)
    with pytest.raises(ImageSizeMismatchError) as info:
        fuse_images(tmp_path / "ir", tmp_path / "vi", tmp_path / "out", MeanFusion(), progress=False)
    message = str(info.value)
    assert str(tmp_path / "ir" / "s.png") in message and str(tmp_path / "vi" / "s.png") in message
    assert "16x12" in message and "32x24" in message
    assert not (tmp_path / "out").exists()  # refused before anything was written

    summary = fuse_images(tmp_path / "ir", tmp_path / "vi", tmp_path / "out", MeanFusion(), resize=True, progress=False)
    assert summary.fused == ["s"]
    assert load(tmp_path / "out" / "Gray" / "s.png").shape == (12, 16)
    assert load(tmp_path / "out" / "RGB" / "s.png").shape == (12, 16, 3)


def test_unreadable_images_are_listed_and_the_rest_fused(tmp_path):
    for name in ("good1", "bad", "good2"):
        write_gray(tmp_path / "ir" / f"{name}.png", (40, 30), 0)
        write_gray(tmp_path / "vi" / f"{name}.png", (40, 30), 1)
    data = (tmp_path / "vi" / "bad.png").read_bytes()
    (tmp_path / "vi" / "bad.png").write_bytes(data[: len(data) // 2])  # truncated
    summary = fuse_images(
        tmp_path / "ir", tmp_path / "vi", tmp_path / "out", MeanFusion(), batch_size=4, progress=False
    )
    assert summary.fused == ["good1", "good2"] and not summary.ok
    assert list(summary.failed) == ["bad"] and "bad.png" in summary.failed["bad"]
    assert sorted(p.name for p in (tmp_path / "out" / "Gray").iterdir()) == ["good1.png", "good2.png"]


def test_existing_output_folder_needs_overwrite(tmp_path):
    write_gray(tmp_path / "ir" / "a.png", (8, 8), 0)
    write_gray(tmp_path / "vi" / "a.png", (8, 8), 1)
    (tmp_path / "out").mkdir()
    fuse_images(tmp_path / "ir", tmp_path / "vi", tmp_path / "out", MeanFusion(), progress=False)  # empty: fine
    before = load(tmp_path / "out" / "Gray" / "a.png")
    write_gray(tmp_path / "vi" / "a.png", (8, 8), 5)
    with pytest.raises(FileExistsError, match="overwrite"):
        fuse_images(tmp_path / "ir", tmp_path / "vi", tmp_path / "out", MeanFusion(), progress=False)
    assert np.array_equal(load(tmp_path / "out" / "Gray" / "a.png"), before)
    fuse_images(tmp_path / "ir", tmp_path / "vi", tmp_path / "out", MeanFusion(), overwrite=True, progress=False)
    assert not np.array_equal(load(tmp_path / "out" / "Gray" / "a.png"), before)


def test_weight_maps_need_a_loss_generator(tmp_path):
    write_gray(tmp_path / "ir" / "a.png", (8, 8), 0)
    write_gray(tmp_path / "vi" / "a.png", (8, 8), 1)
    with pytest.raises(FusionInputError, match="loss generator"):
        fuse_images(tmp_path / "ir", tmp_path / "vi", tmp_path / "out", shared_path(*WEIGHTS), save_weights=True)


# ------------------------------------------------------------------------------------------------------ command line


def run_cli(*args: str):
    return CliRunner().invoke(build_cli(), ["fuse", *args], catch_exceptions=False)


def test_cli_fuses_reports_and_fails_on_unreadable_images(tmp_path, small_checkpoint):
    for name in ("a", "b"):
        write_gray(tmp_path / "ir" / f"{name}.png", (12, 10), 0)
        write_colour(tmp_path / "vi" / f"{name}.png", (12, 10), 1)
    write_gray(tmp_path / "ir" / "lonely.png", (12, 10), 2)
    common = ["--ir", str(tmp_path / "ir"), "--vis", str(tmp_path / "vi"), "--checkpoint", str(small_checkpoint)]
    result = run_cli(*common, "--out", str(tmp_path / "out"), "--save-weights", "--quiet")
    assert result.exit_code == 0, result.output
    assert "fused 2 pair(s)" in result.output and "lonely.png" in result.output
    assert (tmp_path / "out" / "RGB" / "b.png").is_file() and (tmp_path / "out" / "Weights" / "a_vis.png").is_file()

    result = run_cli(*common, "--out", str(tmp_path / "out"))
    assert result.exit_code == 1 and "--overwrite" in result.output

    (tmp_path / "ir" / "a.png").write_bytes(b"garbage")
    result = run_cli(*common, "--out", str(tmp_path / "out2"), "--json", "--quiet")
    assert result.exit_code == 1
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["fused"] == ["b"] and list(report["failed"]) == ["a"] and report["unpaired_ir"] == ["lonely.png"]


def test_cli_errors_name_the_problem(tmp_path):
    write_gray(tmp_path / "ir" / "a.png", (12, 10), 0)
    write_gray(tmp_path / "vi" / "a.png", (14, 10), 1)
    wrong = tmp_path / "wrong.pth"
    torch.save(nn.Sequential(nn.Conv2d(2, 1, 3)).state_dict(), wrong)
    common = ["--ir", str(tmp_path / "ir"), "--vis", str(tmp_path / "vi"), "--out", str(tmp_path / "out")]
    result = run_cli(*common, "--checkpoint", str(shared_path(*WEIGHTS)))
    assert result.exit_code == 1 and "12x10" in result.output and "14x10" in result.output
    result = run_cli(*common, "--checkpoint", str(wrong), "--resize")
    assert result.exit_code == 1
    assert "missing keys" in result.output and "unexpected keys" in result.output and "0.weight" in result.output


@pytest.mark.slow
@pytest.mark.parametrize(("dataset", "split"), [("RoadScene", "train"), ("LLVIP", "val")])
def test_cli_on_whole_shared_folders(tmp_path, dataset, split):
    root = shared_path("data", dataset, split)
    result = run_cli(
        "--ir", str(root / "ir"), "--vis", str(root / "vi"), "--out", str(tmp_path / "out"),
        "--checkpoint", str(shared_path(*WEIGHTS)), "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    names = sorted(p.stem for p in (root / "ir").iterdir())
    assert sorted(p.stem for p in (tmp_path / "out" / "Gray").iterdir()) == names
    assert sorted(p.stem for p in (tmp_path / "out" / "RGB").iterdir()) == names
