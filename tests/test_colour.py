import torch

from tdfusion_core.common.colour import fused_rgb, mix_chroma, rgb_to_ycbcr, task_input, ycbcr_to_rgb


def test_ycbcr_round_trip():
    rgb = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    y, c = rgb_to_ycbcr(rgb)
    assert torch.allclose(ycbcr_to_rgb(y, c), rgb, atol=1e-6)


def test_bt601_luma_coefficients():
    rgb = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    y, _ = rgb_to_ycbcr(rgb)
    assert abs(float(y) - 0.299) < 1e-6


def test_gray_source_passes_visible_chroma_through():
    vis_c = torch.rand(1, 2, 5, 5)
    ir_c = torch.full_like(vis_c, 0.5)
    mixed = mix_chroma(torch.stack([ir_c, vis_c], 1))
    assert torch.allclose(mixed, vis_c, atol=1e-6)


def test_all_gray_gives_gray_rgb():
    y = torch.rand(1, 1, 4, 4)
    rgb = fused_rgb(y, torch.full((1, 2, 2, 4, 4), 0.5))
    assert torch.allclose(rgb, y.expand(-1, 3, -1, -1), atol=1e-6)


def test_mix_weights_by_saturation():
    a = torch.full((1, 2, 1, 1), 0.9)  # |C - .5| = .4
    b = torch.full((1, 2, 1, 1), 0.4)  # |C - .5| = .1
    mixed = mix_chroma(torch.stack([a, b], 1))
    assert torch.allclose(mixed, torch.full_like(mixed, (0.9 * 0.4 + 0.4 * 0.1) / 0.5))


def test_task_input_is_differentiable():
    y = torch.rand(1, 1, 4, 4, requires_grad=True)
    chroma = torch.rand(1, 2, 2, 4, 4)
    out = task_input(y, chroma, "rgb")
    assert out.shape == (1, 3, 4, 4)
    out.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert task_input(y, chroma, "luminance") is y


def test_rgb_task_input_keeps_the_gradient_at_saturated_pixels():
    """The RGB extension clamps values for real but passes the gradient straight through saturated pixels."""
    y = torch.tensor([[[[0.0, 0.02], [0.98, 1.0]]]], dtype=torch.float64, requires_grad=True)
    chroma = torch.zeros(1, 2, 2, 2, 2, dtype=torch.float64)
    chroma[:, :, 0] = 0.9  # strong blue: R, G or B leave [0, 1] at every pixel
    out = task_input(y, chroma, "rgb")
    raw = unclamped_rgb(y.detach(), mix_chroma(chroma))
    assert ((raw < 0) | (raw > 1)).any(dim=1).all()  # every pixel is saturated in some channel
    assert out.min() >= 0 and out.max() <= 1 and torch.allclose(out.detach(), raw.clamp(0, 1), atol=1e-12)
    out.sum().backward()
    # ∂(R + G + B)/∂Y = 3 at every pixel; a plain clamp would give 0 for each saturated channel
    assert torch.allclose(y.grad, torch.full_like(y, 3.0))


def unclamped_rgb(y, chroma):
    """RGB before any clamp: the inverse of the BT.601 map RGB -> (Y, Cb - 0.5, Cr - 0.5) by a linear solve."""
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
    m = torch.stack([luma, 0.564 * (torch.tensor([0.0, 0, 1]) - luma), 0.713 * (torch.tensor([1.0, 0, 0]) - luma)])
    ycc = torch.cat([y, chroma - 0.5], dim=1).permute(0, 2, 3, 1)
    return torch.linalg.solve(m, ycc.unsqueeze(-1)).squeeze(-1).permute(0, 3, 1, 2)
