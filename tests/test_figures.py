"""Figures: the PNGs exist, have the expected pixel size and are not blank; clear error without matplotlib."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tdfusion_core.apps.figures import metrics_bar_chart, weight_map_figure


def _scene() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    y, x = torch.meshgrid(torch.linspace(0, 1, 48), torch.linspace(0, 1, 64), indexing="ij")
    ir = (torch.sin(6 * x) * 0.5 + 0.5)[None]
    vis_rgb = torch.stack([x, y, 1 - x])  # a colour visible image
    w_ir = torch.sigmoid(8 * (x - 0.5))
    weights = torch.stack([w_ir, 1 - w_ir])[None]  # (1, K, H, W) as the loss generator returns
    fused = weights[0, 0] * ir[0] + weights[0, 1] * vis_rgb.mean(0)
    return ir, vis_rgb, fused, weights


def _png(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def test_weight_map_figure_default_and_given_size(tmp_path):
    ir, vis, fused, weights = _scene()
    out = weight_map_figure([ir, vis], fused, weights, tmp_path / "fig" / "weights.png", title="sample 1")
    arr = _png(out)
    # 5 panels of 300 px plus 60 px; height 300 * 48 / 64 + 60
    assert arr.shape[:2] == (285, 5 * 300 + 60)
    assert arr.std() > 10  # something was drawn
    out2 = weight_map_figure(
        [ir[0].numpy() * 255, vis], fused, [weights[0, 0], weights[0, 1]], tmp_path / "w2.png", size=(777, 211)
    )
    assert _png(out2).shape[:2] == (211, 777)


def test_weight_map_figure_checks_its_input(tmp_path):
    ir, vis, fused, weights = _scene()
    with pytest.raises(ValueError, match="2 sources but 1 weight maps"):
        weight_map_figure([ir, vis], fused, weights[:, :1], tmp_path / "x.png")
    with pytest.raises(ValueError, match="do not match"):
        weight_map_figure([ir[..., :32], vis], fused, weights, tmp_path / "x.png")
    bad = fused.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        weight_map_figure([ir, vis], bad, weights, tmp_path / "x.png")


def test_metrics_bar_chart_size(tmp_path):
    means = {
        "mean": {"EN": 6.1, "SF": 7.0, "SCD": 1.7, "VIF": 0.26, "Qabf": 0.35, "SSIM": 0.69},
        "max": {"EN": 6.8, "SF": 11.2, "SCD": 1.6, "VIF": 0.39, "Qabf": 0.60, "SSIM": 0.65},
        "ours": {"EN": 6.9, "SF": 12.0, "SCD": 1.8, "VIF": 0.45, "Qabf": 0.62, "SSIM": 0.70},
    }
    out = metrics_bar_chart(means, tmp_path / "bars.png", title="Table 1")
    arr = _png(out)
    assert arr.shape[:2] == (260 + 40, 6 * 220 + 40)
    assert arr.std() > 10
    out2 = metrics_bar_chart(means, tmp_path / "bars2.png", metrics=["EN", "SF"], size=(401, 303))
    assert _png(out2).shape[:2] == (303, 401)
    with pytest.raises(ValueError, match="missing values"):
        metrics_bar_chart(means, tmp_path / "bars3.png", metrics=["EN", "MI"])


def test_clear_error_without_matplotlib(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib...` raise ImportError
    ir, vis, fused, weights = _scene()
    with pytest.raises(ImportError, match=r"tdfusion-core\[report\]"):
        weight_map_figure([ir, vis], fused, weights, tmp_path / "x.png")
    with pytest.raises(ImportError, match="matplotlib"):
        metrics_bar_chart({"a": {"EN": 1.0}}, tmp_path / "y.png")
    assert not (tmp_path / "x.png").exists()
