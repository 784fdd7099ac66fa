"""``tdfusion eval`` and the evaluation runner on real image pairs from ``../shared/data`` (cropped to stay fast)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tdfusion_core.apps.evaluate import EvaluationInputError, evaluate_folders, rank_methods, read_luminance
from tdfusion_core.commands.cli import build_cli
from tdfusion_core.metrics import fusion as fm
from tests.conftest import shared_path

PAIRS = [("LLVIP", "010001"), ("LLVIP", "010002"), ("MSRS_det", "00004N")]
CROP = (200, 140, 328, 236)  # left, top, right, bottom: 128 x 96 pixels


def _luma(rgb: np.ndarray) -> np.ndarray:
    """Independent BT.601 luminance on 0..255, rounded (what the evaluator should score an RGB image by)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    return np.round(0.299 * r + 0.587 * g + 0.114 * b)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """ir/ (gray) and vis/ (RGB) crops of real pairs; fused folders: mean/ and max/ (gray) and max_rgb/ (colour)."""
    root = tmp_path_factory.mktemp("eval")
    out = {name: root / name for name in ("ir", "vis", "mean", "max", "max_rgb")}
    for p in out.values():
        p.mkdir()
    for dataset, stem in PAIRS:
        ir = Image.open(shared_path("data", dataset, "train", "ir", f"{stem}.png")).convert("L").crop(CROP)
        vis = Image.open(shared_path("data", dataset, "train", "vi", f"{stem}.png")).convert("RGB").crop(CROP)
        name = f"{dataset}_{stem}"
        ir.save(out["ir"] / f"{name}.png")
        vis.save(out["vis"] / f"{name}.png")
        a = np.asarray(ir, dtype=np.float64)
        vis_arr = np.asarray(vis)
        b = _luma(vis_arr)
        Image.fromarray(np.round((a + b) / 2).astype(np.uint8)).save(out["mean"] / f"{name}.png")
        mx = np.maximum(a, b)
        Image.fromarray(mx.astype(np.uint8)).save(out["max"] / f"{name}.png")
        # colour version of "max": add the luminance change to every channel (keeps the visible chroma)
        rgb = np.clip(vis_arr.astype(np.float64) + (mx - b)[..., None], 0, 255).round().astype(np.uint8)
        Image.fromarray(rgb).save(out["max_rgb"] / f"{name}.png")
    return out


def _run(args: list[str]):
    return CliRunner().invoke(build_cli(), args, catch_exceptions=False)


def _markdown_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] not in ("Method",) and not cells[0].startswith("---"):
            rows[cells[0]] = cells[1:]
    return rows


def test_eval_writes_all_formats_with_marks(folders, tmp_path):
    out = tmp_path / "report"
    result = _run(
        [
            "eval",
            "--ir",
            str(folders["ir"]),
            "--vis",
            str(folders["vis"]),
            "--fused",
            f"mean={folders['mean']}",
            "--fused",
            f"max={folders['max']}",
            "--fused",
            str(folders["max_rgb"]),
            "--out",
            str(out),
            "--per-image",
            "--dataset",
            "real3",
            "--quiet",
        ]
    )
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"metrics.md", "metrics.csv", "metrics.json", "per_image.csv"}

    # JSON
    data = json.loads((out / "metrics.json").read_text())
    assert data["metrics"] == list(fm.TABLE1)
    assert all(data["higher_is_better"].values())
    ds = data["datasets"]["real3"]
    assert ds["images"] == sorted(f"{d}_{s}" for d, s in PAIRS)
    assert set(ds["methods"]) == {"mean", "max", "max_rgb"}

    # CSV: same means as JSON, full precision
    with (out / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == ["mean", "max", "max_rgb"]
    for r in rows:
        assert r["dataset"] == "real3" and r["images"] == "3"
        for m in fm.TABLE1:
            assert float(r[m]) == ds["methods"][r["method"]][m]

    # best and second best: from the values, in JSON and in the Markdown marks
    md = (out / "metrics.md").read_text()
    assert result.output.strip().startswith("### real3 (3 images)")
    table = _markdown_rows(md)
    for j, m in enumerate(fm.TABLE1):
        values = {k: v[m] for k, v in ds["methods"].items()}
        distinct = sorted(set(values.values()), reverse=True)
        best = [k for k, v in values.items() if v == distinct[0]]
        second = [k for k, v in values.items() if len(distinct) > 1 and v == distinct[1]]
        assert ds["best"][m] == best and ds["second"][m] == second and second
        for method, value in values.items():
            plain = f"{value:.4f}"
            expected = f"**{plain}**" if method in best else f"<u>{plain}</u>" if method in second else plain
            assert table[method][j] == expected, (method, m)

    # per-image CSV agrees with an independent read of the files (RGB reduced to rounded BT.601 luminance)
    with (out / "per_image.csv").open() as fh:
        per_image = list(csv.DictReader(fh))
    assert len(per_image) == 9
    for row in per_image:
        name, method = row["image"], row["method"]
        a = np.asarray(Image.open(folders["ir"] / f"{name}.png"), dtype=np.float64)
        b = _luma(np.asarray(Image.open(folders["vis"] / f"{name}.png")))
        f_img = np.asarray(Image.open(folders[method] / f"{name}.png"))
        f = _luma(f_img) if f_img.ndim == 3 else f_img.astype(np.float64)
        expected = fm.compute_fusion_metrics(torch.from_numpy(f), [torch.from_numpy(a), torch.from_numpy(b)])
        for m in fm.TABLE1:
            assert float(row[m]) == pytest.approx(float(expected[m]), rel=1e-9, abs=1e-12), (name, method, m)
    means = {m: np.mean([float(r[m]) for r in per_image if r["method"] == "mean"]) for m in fm.TABLE1}
    assert means == pytest.approx(ds["methods"]["mean"])

    # the colour copy of "max" scores (nearly) like the gray one: RGB is scored on its luminance
    for m in fm.TABLE1:
        assert ds["methods"]["max_rgb"][m] == pytest.approx(ds["methods"]["max"][m], rel=0.05), m


def test_metric_selection_and_partial_overlap(folders, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    first = sorted(folders["max"].iterdir())[0]
    (partial / first.name).write_bytes(first.read_bytes())
    out = tmp_path / "r"
    result = CliRunner().invoke(
        build_cli(),
        [
            *("eval", "--ir", str(folders["ir"]), "--vis", str(folders["vis"]), "--fused", f"p={partial}"),
            *("--out", str(out), "--metrics", "EN,MI-nats,PSNR", "--quiet", "--plot"),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads((out / "metrics.json").read_text())
    ds = next(iter(data["datasets"].values()))
    assert data["metrics"] == ["EN", "MI-nats", "PSNR"]
    assert ds["images"] == [first.stem] and len(ds["missing"]["p"]) == 2
    assert "left out" in result.output
    assert not (out / "per_image.csv").exists()
    with Image.open(out / "metrics.png") as im:  # --plot: one panel per metric (220 px each + 40)
        assert im.size == (3 * 220 + 40, 300)
    assert ds["best"]["EN"] == ["p"] and ds["second"]["EN"] == []  # one method: best, no second


def _eval_error(folders, tmp_path, fused_dir: Path, *extra: str) -> str:
    result = CliRunner().invoke(
        build_cli(),
        [
            *("eval", "--ir", str(folders["ir"]), "--vis", str(folders["vis"]), "--fused", f"bad={fused_dir}"),
            *("--out", str(tmp_path / "out"), "--quiet", *extra),
        ],
    )
    assert result.exit_code != 0
    return result.output


def _copy_fused(folders, tmp_path) -> tuple[Path, list[Path]]:
    bad = tmp_path / "bad"
    bad.mkdir()
    files = sorted(folders["max"].iterdir())
    for p in files:
        (bad / p.name).write_bytes(p.read_bytes())
    return bad, sorted(bad.iterdir())


def test_size_mismatch_names_the_files(folders, tmp_path):
    bad, files = _copy_fused(folders, tmp_path)
    Image.open(files[1]).crop((0, 0, 100, 90)).save(files[1])
    output = _eval_error(folders, tmp_path, bad)
    assert files[1].name in output and "90x100" in output and str(folders["ir"]) in output


def test_wrong_channel_count_is_refused(folders, tmp_path):
    bad, files = _copy_fused(folders, tmp_path)
    Image.open(files[0]).convert("RGBA").save(files[0])
    output = _eval_error(folders, tmp_path, bad)
    assert files[0].name in output and "single-channel or RGB" in output and "4 channel" in output


def test_nan_in_an_image_is_refused(folders, tmp_path):
    bad, files = _copy_fused(folders, tmp_path)
    arr = np.asarray(Image.open(files[2]), dtype=np.float32) / 255
    arr[5, 7] = np.nan
    files[2].unlink()
    Image.fromarray(arr, mode="F").save(bad / f"{files[2].stem}.tif")
    output = _eval_error(folders, tmp_path, bad)
    assert f"{files[2].stem}.tif" in output and "NaN" in output


def test_no_common_names(folders, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(np.zeros((96, 128), np.uint8)).save(other / "unrelated.png")
    output = _eval_error(folders, tmp_path, other)
    assert "no image name is common" in output and str(other) in output


def test_usage_errors(folders, tmp_path):
    output = _eval_error(folders, tmp_path, folders["max"], "--metrics", "EN,BOGUS")
    assert "BOGUS" in output and "known:" in output
    result = CliRunner().invoke(
        build_cli(), ["eval", "--ir", str(folders["ir"]), "--vis", str(folders["vis"]), "--out", str(tmp_path)]
    )
    assert result.exit_code != 0 and "--fused" in result.output


def test_eval_help_lists_its_options():
    assert "--per-image" in CliRunner().invoke(build_cli(), ["eval", "--help"]).output


def test_rank_methods_ties_nan_and_direction(monkeypatch):
    means = {"a": {"X": 1.0}, "b": {"X": 3.0}, "c": {"X": 3.0}, "d": {"X": 2.0}, "e": {"X": math.nan}}
    assert rank_methods(means, "X") == (["b", "c"], ["d"])
    monkeypatch.setitem(fm.HIGHER_IS_BETTER, "X", False)
    assert rank_methods(means, "X") == (["a"], ["d"])


def test_read_luminance_and_runner_api(folders):
    vis = sorted(folders["vis"].iterdir())[0]
    y = read_luminance(vis)
    assert y.dtype == torch.float64 and y.shape == (96, 128)
    assert torch.equal(y, torch.from_numpy(_luma(np.asarray(Image.open(vis)))))
    result = evaluate_folders(folders["ir"], folders["vis"], {"max": folders["max"]}, metrics=["EN", "SF"])
    assert result.methods == ["max"] and len(result.images) == 3 and result.missing == {}
    with pytest.raises(EvaluationInputError, match="reserved"):
        evaluate_folders(folders["ir"], folders["vis"], {"ir": folders["max"]})
    with pytest.raises(KeyError, match="unknown fusion metric"):
        evaluate_folders(folders["ir"], folders["vis"], {"m": folders["max"]}, metrics=["NOPE"])


def test_eval_of_a_checkpoint_fuses_first(folders, tmp_path):
    weights = shared_path("weights", "ReFusion_IVIF.pth")
    out = tmp_path / "ckpt"
    result = CliRunner().invoke(
        build_cli(),
        [
            *("eval", "--ir", str(folders["ir"]), "--vis", str(folders["vis"]), "--fused", f"max={folders['max']}"),
            *("--checkpoint", f"refusion={weights}", "--out", str(out), "--quiet", "--metrics", "EN,SF,SSIM"),
        ],
    )
    assert result.exit_code == 0, result.output
    fused = sorted(p.stem for p in (out / "fused" / "refusion" / "Gray").iterdir())
    assert fused == sorted(f"{d}_{s}" for d, s in PAIRS)
    ds = next(iter(json.loads((out / "metrics.json").read_text())["datasets"].values()))
    assert set(ds["methods"]) == {"max", "refusion"}
    direct = evaluate_folders(
        folders["ir"], folders["vis"], {"refusion": out / "fused" / "refusion" / "Gray"}, metrics=["EN", "SF", "SSIM"]
    )
    assert ds["methods"]["refusion"] == pytest.approx(direct.means["refusion"])
    assert 0 < ds["methods"]["refusion"]["SSIM"] <= 1
    missing = CliRunner().invoke(
        build_cli(),
        [
            *("eval", "--ir", str(folders["ir"]), "--vis", str(folders["vis"])),
            *("--checkpoint", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "o2"), "--quiet"),
        ],
    )
    assert missing.exit_code != 0 and "nope.pth" in missing.output
