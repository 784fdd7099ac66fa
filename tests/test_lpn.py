"""The LPN loss generator: a per-pixel softmax over K sources, reference layout, differentiability."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, jvp

from tdfusion_core import get_loss_generator
from tdfusion_core.nets.lpn import LossGenerator
from tests.torch_threads import one_torch_thread  # noqa: F401


def small_lpn(num_sources: int = 2) -> LossGenerator:
    torch.manual_seed(0)
    return LossGenerator(num_sources=num_sources, dim=8, num_blocks=1, heads=2)


@pytest.mark.parametrize("num_sources", [2, 3, 5])
def test_weights_are_a_softmax_over_the_sources(num_sources):
    g = small_lpn(num_sources)
    w = g(torch.rand(2, num_sources, 9, 14))
    assert w.shape == (2, num_sources, 9, 14)
    assert float(w.min()) > 0
    assert torch.allclose(w.sum(dim=1), torch.ones(2, 9, 14), atol=1e-6)


def test_reference_layout_and_parameter_count():
    g = LossGenerator()
    names = dict(g.named_parameters())
    # Reference LPN(dim=16, num_blocks=2, heads=[8, 8, 8]): two source branches, joint blocks "encoder3" of width 32,
    # PReLU "out2" with one weight, "out3" to two channels.
    assert names["patch_embed1.weight"].shape == (16, 1, 3, 3)
    assert names["encoder3.1.attn.qkv.weight"].shape == (96, 32, 1, 1)
    assert names["out2.weight"].shape == (1,)
    assert names["out3.weight"].shape == (2, 16, 3, 3)
    # Counted by hand from the reference's layer shapes: 2 embeddings (288), 4 blocks of width 16 (4 x 3640),
    # 2 of width 32 (2 x 12392), out1 (4608), PReLU (1), out3 (288).
    assert sum(p.numel() for p in g.parameters()) == 44529


def test_every_parameter_gets_a_gradient():
    g = small_lpn(3)
    w = g(torch.rand(1, 3, 8, 8))
    (w[:, 0] * torch.rand(8, 8)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in g.parameters())


def test_jvp_matches_finite_difference():
    g = small_lpn().double()
    x = torch.rand(1, 2, 8, 10, dtype=torch.float64)
    params = {k: v.detach() for k, v in g.named_parameters()}
    tangents = {k: torch.randn_like(v) for k, v in params.items()}
    _, directional = jvp(lambda p: functional_call(g, p, (x,)), (params,), (tangents,))
    eps = 1e-6
    plus = functional_call(g, {k: params[k] + eps * tangents[k] for k in params}, (x,))
    minus = functional_call(g, {k: params[k] - eps * tangents[k] for k in params}, (x,))
    assert torch.allclose(directional, (plus - minus) / (2 * eps), atol=1e-8, rtol=1e-6)
    assert torch.allclose(directional.sum(dim=1), torch.zeros(1, 8, 10, dtype=torch.float64), atol=1e-10)


def test_registry_and_errors():
    g = get_loss_generator("lpn", num_sources=3, dim=8, heads=2, joint_heads=4)
    assert g.joint[0].attn.num_heads == 4 and g.encoder1[0].attn.num_heads == 2
    with pytest.raises(ValueError, match="at least 2 sources"):
        LossGenerator(num_sources=1)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        g(torch.rand(1, 2, 8, 8))
