"""The ReFusion fusion network: published weights and golden outputs, forward-mode AD, shapes, configuration."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.func import functional_call, jvp

from tdfusion_core import get_fusion_net
from tdfusion_core.nets.refusion import FusionNet
from tdfusion_core.training.checkpoints import convert_reference_state_dict, load_model_checkpoint
from tests.conftest import shared_path
from tests.torch_threads import one_torch_thread  # noqa: F401


def small_net(num_sources: int = 2, **config) -> FusionNet:
    torch.manual_seed(0)
    return FusionNet(num_sources=num_sources, dim=8, num_blocks=1, heads=2, **config)


def test_parameter_names_and_count_match_the_published_weights():
    state = torch.load(shared_path("weights", "ReFusion_IVIF.pth"), map_location="cpu", weights_only=True)
    converted = convert_reference_state_dict(state)
    ours = FusionNet().state_dict()
    assert set(ours) == set(converted)
    assert all(ours[k].shape == converted[k].shape for k in ours)
    assert sum(p.numel() for p in FusionNet().parameters()) == 59856  # the published file's distinct parameters


@pytest.mark.parametrize("case", json.loads(shared_path("golden", "refusion", "expected.json").read_text())["cases"])
def test_golden_output_of_the_published_weights(case):
    net = load_model_checkpoint(shared_path("weights", "ReFusion_IVIF.pth")).fusion_net
    x = torch.from_numpy(np.load(shared_path("golden", "refusion", case["input"])))[None]
    expected = np.load(shared_path("golden", "refusion", case["fused"]))
    with torch.inference_mode():
        got = net(x)[0, 0].numpy()
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-5
    assert got.mean() == pytest.approx(case["fused_mean"], abs=1e-6)


def test_jvp_matches_central_finite_difference():
    net = small_net().double()
    x = torch.rand(2, 2, 10, 14, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    params = {k: v.detach() for k, v in net.named_parameters()}
    gen = torch.Generator().manual_seed(2)
    tangents = {k: torch.randn(v.shape, dtype=v.dtype, generator=gen) for k, v in params.items()}

    def f(p):
        return functional_call(net, p, (x,))

    out, directional = jvp(f, (params,), (tangents,))
    eps = 1e-6
    plus = f({k: params[k] + eps * tangents[k] for k in params})
    minus = f({k: params[k] - eps * tangents[k] for k in params})
    finite = (plus - minus) / (2 * eps)
    assert torch.allclose(out, net(x))
    assert directional.abs().max() > 1e-3  # a real signal, not a zero tangent
    assert torch.allclose(directional, finite, atol=1e-8, rtol=1e-6)


def test_jvp_with_respect_to_the_input_matches_finite_difference():
    net = small_net(num_sources=3).double()
    x = torch.rand(1, 3, 9, 11, dtype=torch.float64)
    v = torch.randn_like(x)
    _, directional = jvp(net, (x,), (v,))
    eps = 1e-6
    finite = (net(x + eps * v) - net(x - eps * v)) / (2 * eps)
    assert torch.allclose(directional, finite, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("num_sources", [2, 3, 4])
def test_any_size_and_any_number_of_sources(num_sources):
    net = small_net(num_sources)
    x = torch.rand(2, num_sources, 7, 13)
    y = net(x)
    assert y.shape == (2, 1, 7, 13)
    assert float(y.min()) > 0 and float(y.max()) < 1  # sigmoid
    y.sum().backward()
    unused = [name for name, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not unused, f"parameters without gradient: {unused}"


def test_batch_items_are_independent():
    net = small_net()
    x = torch.rand(3, 2, 8, 8)
    with torch.no_grad():
        batched = net(x)
        single = torch.cat([net(x[i : i + 1]) for i in range(3)])
    assert torch.allclose(batched, single, atol=1e-6)


def test_channels_last_gives_the_same_output():
    net = small_net()
    x = torch.rand(1, 2, 12, 16)
    with torch.no_grad():
        ref = net(x)
        out = net.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(ref, out, atol=1e-5)


def test_configuration_and_errors():
    net = get_fusion_net("refusion", num_sources=2, dim=12, num_blocks=3, heads=4, ffn_expansion_factor=1.5)
    assert len(net.encoder1) == 3 and net.project_in_1.out_channels == 12
    assert net.encoder1[0].ffn.project_out.in_channels == 18
    assert net.size_multiple == 1
    with pytest.raises(ValueError, match="divisible"):
        FusionNet(dim=10, heads=4)
    with pytest.raises(ValueError, match="at least 2 sources"):
        FusionNet(num_sources=1)
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        small_net()(torch.rand(1, 3, 8, 8))
