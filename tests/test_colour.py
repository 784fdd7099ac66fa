import torch

from tdfusion_core.colour import fused_rgb, mix_chroma, rgb_to_ycbcr, task_input, ycbcr_to_rgb


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
