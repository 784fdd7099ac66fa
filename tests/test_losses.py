"""Fusion loss against the golden values of the released code and the paper, plus independent identities."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf

from tdfusion_core.kernel.losses import (
    FusionLoss,
    discriminative_fusion,
    fixed_weights,
    gradient_loss,
    intensity_loss,
    sobel_xy,
)
from tests.conftest import shared_path


@pytest.fixture(scope="module")
def golden():
    data = np.load(shared_path("golden", "fusion_loss", "tensors.npz"))
    expected = json.loads(shared_path("golden", "fusion_loss", "expected.json").read_text())
    t = {k: torch.from_numpy(v).double() for k, v in data.items()}
    sources = torch.cat([t["ir"], t["vis"]], 1)
    return sources, t["fused"], t["weights"], expected


def test_reference_intensity_matches_golden(golden):
    sources, fused, weights, expected = golden
    got = float(intensity_loss(fused, sources, weights, "reference"))
    assert got == pytest.approx(expected["reference_intensity"], rel=1e-6)


def test_paper_intensity_matches_golden(golden):
    sources, fused, weights, expected = golden
    got = float(intensity_loss(fused, sources, weights, "paper"))
    assert got == pytest.approx(expected["paper_intensity"], rel=1e-6)


def test_gradient_term_matches_golden(golden):
    sources, fused, _, expected = golden
    assert float(gradient_loss(fused, sources)) == pytest.approx(expected["reference_gradient"], rel=1e-6)


def test_total_is_intensity_plus_alpha_gradient(golden):
    sources, fused, weights, expected = golden
    total = float(FusionLoss(alpha=0.5)(fused, sources, weights))
    assert total == pytest.approx(expected["reference_intensity"] + 0.5 * expected["reference_gradient"], rel=1e-6)
    terms = FusionLoss(alpha=0.0).terms(fused, sources, weights)
    assert float(terms["gradient"]) == 0.0 and float(terms["total"]) == float(terms["intensity"])


def test_sobel_equals_plain_cross_correlation():
    x = torch.rand(2, 1, 9, 11, dtype=torch.float64)
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=torch.float64)
    gx, gy = sobel_xy(x)
    assert torch.allclose(gx, nnf.conv2d(x, kx.view(1, 1, 3, 3), padding=1))
    assert torch.allclose(gy, nnf.conv2d(x, kx.t().reshape(1, 1, 3, 3), padding=1))


def test_gradient_loss_zero_when_fused_copies_the_only_textured_source():
    a = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    b = torch.zeros_like(a)  # zero padding: a zero image has no Sobel response anywhere
    assert float(gradient_loss(a, torch.cat([a, b], 1))) == pytest.approx(0.0, abs=1e-12)


def test_fixed_weights_and_discriminative_fusion():
    s = torch.rand(2, 3, 4, 5)
    w = fixed_weights(s)
    assert torch.allclose(w.sum(1), torch.ones(2, 4, 5))
    assert torch.allclose(discriminative_fusion(s, w), s.mean(1, keepdim=True))


def test_invalid_form_is_named():
    with pytest.raises(ValueError, match="intensity form"):
        intensity_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), "bogus")


def test_paper_gradient_form_is_eq3_with_l1_gradient_magnitudes():
    """Eq. 3: mean | |∇If| − max_k |∇I_k| | with |∇I| = |∂x I| + |∂y I|, against plain convolutions."""
    torch.manual_seed(0)
    sources, fused = torch.rand(2, 3, 9, 11, dtype=torch.float64), torch.rand(2, 1, 9, 11, dtype=torch.float64)
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=torch.float64).view(1, 1, 3, 3)

    def magnitude(x):
        return nnf.conv2d(x, kx, padding=1).abs() + nnf.conv2d(x, kx.transpose(-1, -2), padding=1).abs()

    strongest = torch.stack([magnitude(sources[:, k : k + 1]) for k in range(3)]).amax(0)
    expected = (magnitude(fused) - strongest).abs().mean()
    assert torch.allclose(gradient_loss(fused, sources, "paper"), expected, rtol=1e-12)
    # a magnitude form: blind to the sign of the edges, unlike the released form
    a = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    pair = torch.cat([a, torch.zeros_like(a)], 1)
    assert float(gradient_loss(1 - a, pair, "paper")) < 0.5 * float(gradient_loss(1 - a, pair, "released"))
    assert float(gradient_loss(a, pair, "paper")) == pytest.approx(0.0, abs=1e-12)
    loss = FusionLoss(alpha=2.0, gradient_form="paper")
    w = fixed_weights(sources)
    assert torch.allclose(
        loss(fused, sources, w), intensity_loss(fused, sources, w) + 2 * gradient_loss(fused, sources, "paper")
    )
    with pytest.raises(ValueError, match="gradient form"):
        gradient_loss(fused, sources, "bogus")  # type: ignore[arg-type]
