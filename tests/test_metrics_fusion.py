"""Fusion metrics: golden values of the paper's Table 1 set, and known answers / independent checks for the rest."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from tdfusion_core.metrics import fusion as fm
from tests.conftest import shared_path

GOLDEN_TOL = {"EN": 1e-6, "SF": 1e-6, "SCD": 1e-6, "Qabf": 1e-6, "VIF": 1e-4, "SSIM": 1e-4}


def _golden_cases() -> list[dict]:
    return json.loads(shared_path("golden", "fusion_metrics", "expected.json").read_text())["cases"]


def _read(name: str) -> torch.Tensor:
    path = shared_path("golden", "fusion_metrics", name)
    return torch.from_numpy(np.asarray(Image.open(path), dtype=np.float64))


@pytest.mark.parametrize("case", _golden_cases(), ids=lambda c: c["f"].removesuffix(".png"))
def test_table1_metrics_match_golden(case):
    f, a, b = _read(case["f"]), _read(case["a"]), _read(case["b"])
    got = fm.compute_fusion_metrics(f, [a, b], names=fm.TABLE1)
    for name, tol in GOLDEN_TOL.items():
        assert float(got[name]) == pytest.approx(case[name], rel=tol), name


def test_golden_covers_every_table1_metric():
    cases = _golden_cases()
    assert len(cases) >= 20
    assert all(set(fm.TABLE1) <= set(c) for c in cases)
    assert set(GOLDEN_TOL) == set(fm.TABLE1)


# --- known answers -----------------------------------------------------------------------------------------------

RNG = np.random.default_rng(0)


def _img(h: int = 64, w: int = 72, seed: int = 0) -> torch.Tensor:
    """A smooth-ish random 0..255 integer image (gradients of several sizes)."""
    g = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 120 + 60 * np.sin(x / 7.0 + seed) * np.cos(y / 11.0) + g.normal(0, 12, (h, w))
    return torch.from_numpy(np.clip(np.round(base), 0, 255))


def test_entropy_known_values():
    assert float(fm.entropy(torch.full((20, 20), 77.0))) == 0.0
    two = torch.zeros(10, 10)
    two[:, 5:] = 200
    assert float(fm.entropy(two)) == pytest.approx(1.0)
    uniform = torch.arange(256.0).reshape(16, 16)
    assert float(fm.entropy(uniform)) == pytest.approx(8.0)


def test_spatial_frequency_and_gradients_of_simple_images():
    const = torch.full((12, 15), 40.0)
    assert float(fm.spatial_frequency(const)) == 0.0
    assert float(fm.average_gradient(const)) == 0.0
    assert float(fm.standard_deviation(const)) == 0.0
    ramp = torch.arange(15.0).repeat(12, 1) * 3  # horizontal step 3, vertical step 0
    assert float(fm.spatial_frequency(ramp)) == pytest.approx(3.0)
    assert float(fm.average_gradient(ramp)) == pytest.approx(3.0 / math.sqrt(2))


def test_sd_and_ag_match_numpy():
    x = _img(seed=3).numpy()
    assert float(fm.standard_deviation(torch.from_numpy(x))) == pytest.approx(np.std(x), rel=1e-12)
    gy, gx = np.gradient(x)
    assert float(fm.average_gradient(torch.from_numpy(x))) == pytest.approx(
        np.mean(np.sqrt((gx**2 + gy**2) / 2)), rel=1e-12
    )


def test_similarity_metrics_of_an_image_with_itself():
    x = _img(200, 210, seed=1)
    assert float(fm.ssim(x, [x, x])) == pytest.approx(1.0, abs=1e-12)
    assert float(fm.ssim(x, [x, x], reduction="sum")) == pytest.approx(2.0, abs=1e-12)
    assert float(fm.vif(x, [x, x])) == pytest.approx(1.0, abs=1e-6)
    assert float(fm.ms_ssim(x, [x, x])) == pytest.approx(1.0, abs=1e-6)
    assert float(fm.correlation_coefficient(x, [x, x])) == pytest.approx(1.0, abs=1e-12)
    assert math.isinf(float(fm.psnr(x, [x, x])))


def test_psnr_of_a_constant_offset():
    x = _img(seed=2).clamp(10, 200)
    d = 5.0
    expected = 10 * math.log10(255.0**2 / d**2)
    assert float(fm.psnr(x + d, [x, x])) == pytest.approx(expected, rel=1e-12)
    assert float(fm.psnr(x + d, [x, x], peak="max")) == pytest.approx(
        10 * math.log10(float((x + d).max()) ** 2 / d**2), rel=1e-12
    )


def test_scd_of_the_sum_of_the_sources_is_two():
    a, b = _img(seed=4), _img(seed=5)
    assert float(fm.scd(a + b, [a, b])) == pytest.approx(2.0, abs=1e-12)
    with pytest.raises(ValueError, match="two sources"):
        fm.scd(a, [a, b, a])


def test_mutual_information_properties():
    a, b = _img(seed=6), _img(seed=7)
    # MI of an image with itself is its entropy; MI is symmetric; nats = bits * ln 2.
    assert float(fm.mutual_information(a, [a])) == pytest.approx(float(fm.entropy(a)), rel=1e-12)
    assert float(fm.mutual_information(a, [b])) == pytest.approx(float(fm.mutual_information(b, [a])), rel=1e-12)
    bits = float(fm.mutual_information(a, [a, b]))
    assert float(fm.mutual_information(a, [a, b], base="nats")) == pytest.approx(bits * math.log(2), rel=1e-12)
    assert float(fm.mutual_information(a, [a, b], reduction="mean")) == pytest.approx(bits / 2, rel=1e-12)


def test_mutual_information_matches_numpy_joint_histogram():
    a, f = _img(seed=8).numpy(), _img(seed=9).numpy()
    joint, _, _ = np.histogram2d(a.ravel(), f.ravel(), bins=256, range=[[-0.5, 255.5], [-0.5, 255.5]])
    p = joint / joint.sum()
    pa, pf = p.sum(1), p.sum(0)
    nz = p > 0
    expected = np.sum(p[nz] * np.log2(p[nz] / np.outer(pa, pf)[nz]))
    assert float(fm.mutual_information(torch.from_numpy(f), [torch.from_numpy(a)])) == pytest.approx(
        expected, rel=1e-10
    )


def test_qabf_matches_a_direct_scipy_reference():
    """Q^AB/F against a literal loop-free NumPy/SciPy transcription of the reference (equal strengths included)."""
    from scipy.signal import convolve2d

    def arrays(img):
        sx = convolve2d(img, np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], float), mode="same")
        sy = convolve2d(img, np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], float), mode="same")
        g = np.sqrt(sx**2 + sy**2)
        a = np.full_like(img, math.pi / 2)
        a[sx != 0] = np.arctan(sy[sx != 0] / sx[sx != 0])
        return g, a

    def q(ga, aa, gf, af):
        gaf = np.zeros_like(ga)
        gaf[ga > gf] = gf[ga > gf] / ga[ga > gf]
        gaf[ga == gf] = gf[ga == gf]
        gaf[ga < gf] = ga[ga < gf] / gf[ga < gf]
        aaf = 1 - np.abs(aa - af) / (math.pi / 2)
        return 0.9994 / (1 + np.exp(-15 * (gaf - 0.5))) * 0.9879 / (1 + np.exp(-22 * (aaf - 0.8)))

    a, b = _img(seed=10).numpy(), _img(seed=11).numpy()
    f = np.maximum(a, b)
    f[:10, :10] = 0  # flat patch: equal (zero) strengths
    (ga, aa), (gb, ab), (gf, af) = arrays(a), arrays(b), arrays(f)
    expected = np.sum(q(ga, aa, gf, af) * ga + q(gb, ab, gf, af) * gb) / np.sum(ga + gb)
    got = fm.qabf(torch.from_numpy(f), [torch.from_numpy(a), torch.from_numpy(b)])
    assert float(got) == pytest.approx(expected, rel=1e-12)
    swapped = fm.qabf(torch.from_numpy(f), [torch.from_numpy(b), torch.from_numpy(a)])
    assert float(swapped) == pytest.approx(float(got), rel=1e-12)


def test_vif_and_ssim_sum_variants_are_twice_the_mean():
    a, b = _img(96, 100, seed=12), _img(96, 100, seed=13)
    f = (a + b) / 2
    assert float(fm.vif(f, [a, b], reduction="sum")) == pytest.approx(2 * float(fm.vif(f, [a, b])), rel=1e-12)
    assert float(fm.METRICS["SSIM-sum"](f, [a, b])) == pytest.approx(2 * float(fm.ssim(f, [a, b])), rel=1e-12)


# --- shapes, batching, registry ----------------------------------------------------------------------------------


def test_batched_equals_per_image_and_source_forms_agree():
    imgs = [(_img(64, 64, seed=s), _img(64, 64, seed=s + 20)) for s in range(3)]
    fused = torch.stack([torch.maximum(a, b) for a, b in imgs])[:, None].float()
    sources = torch.stack([torch.stack([a, b]) for a, b in imgs]).float()
    names = ["EN", "SF", "SCD", "VIF", "Qabf", "SSIM", "SD", "AG", "MI", "PSNR", "CC"]
    batched = fm.compute_fusion_metrics(fused, sources, names=names)
    as_list = fm.compute_fusion_metrics(fused, [sources[:, :1], sources[:, 1:]], names=names)
    for i in range(3):
        single = fm.compute_fusion_metrics(fused[i, 0], sources[i], names=names)
        for name in names:
            assert batched[name].shape == (3,) and batched[name].dtype == torch.float64
            assert single[name].shape == ()
            assert float(batched[name][i]) == pytest.approx(float(single[name]), rel=1e-9, abs=1e-12), name
            assert float(as_list[name][i]) == pytest.approx(float(single[name]), rel=1e-12, abs=1e-12), name


def test_value_range_rescales_unit_images():
    a, b = _img(64, 64, seed=30), _img(64, 64, seed=31)
    f = torch.maximum(a, b)
    at255 = fm.compute_fusion_metrics(f, [a, b])
    at1 = fm.compute_fusion_metrics(f / 255, [a / 255, b / 255], value_range=1.0)
    for name in fm.TABLE1:
        assert float(at1[name]) == pytest.approx(float(at255[name]), rel=1e-9), name


def test_registry_and_errors():
    assert set(fm.TABLE1) <= set(fm.METRICS)
    assert {"SD", "AG", "MI", "PSNR", "CC", "MS-SSIM", "VIF-sum", "SSIM-sum", "MI-nats"} <= set(fm.METRICS)
    assert set(fm.HIGHER_IS_BETTER) == set(fm.METRICS)
    x = _img(64, 64)
    with pytest.raises(KeyError, match=r"unknown fusion metric.*known: EN"):
        fm.compute_fusion_metrics(x, [x, x], names=["EN", "nope"])
    with pytest.raises(ValueError, match="not match"):
        fm.ssim(x, [x, x[:32]])
    with pytest.raises(ValueError, match=r"\(H, W\) or \(B, 1, H, W\)"):
        fm.entropy(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="160"):
        fm.ms_ssim(x, [x, x])
    with pytest.raises(ValueError, match="41x41"):
        fm.vif(x[:30, :30], [x[:30, :30], x[:30, :30]])
