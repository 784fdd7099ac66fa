"""The source-order-equivariant loss generator: swapping the sources swaps the weights, and nothing else."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.func import jvp

from tdfusion_core import get_loss_generator
from tdfusion_core.nets.lpn import LossGenerator
from tdfusion_core.nets.lpn_equivariant import EquivariantLossGenerator
from tdfusion_core.training.generator_stats import generator_stats
from tests.torch_threads import one_torch_thread  # noqa: F401


def trained_like(num_sources: int) -> EquivariantLossGenerator:
    """Random weights everywhere, the last layer included (zero_init would make every output 1/K)."""
    torch.manual_seed(0)
    return EquivariantLossGenerator(num_sources, dim=8, num_blocks=1, heads=2, zero_init=False)


def test_swapping_two_sources_swaps_the_weights_exactly():
    g = trained_like(2)
    x = torch.rand(3, 2, 12, 17)
    w, w_swapped = g(x), g(x.flip(1))
    assert float((w[:, 0] - 0.5).abs().max()) > 0.01  # it does prefer sources per pixel...
    assert torch.equal(w_swapped, w.flip(1))  # ...but by content, never by position
    assert generator_stats(g, x)["g/order_gap"] == 0.0


@pytest.mark.parametrize("num_sources", [3, 4])
def test_every_permutation_of_k_sources_permutes_the_weights(num_sources):
    g = trained_like(num_sources)
    x = torch.rand(2, num_sources, 10, 11)
    w = g(x)
    for perm in itertools.permutations(range(num_sources)):
        torch.testing.assert_close(g(x[:, list(perm)]), w[:, list(perm)], rtol=0, atol=1e-6)


def test_the_released_lpn_is_not_equivariant():
    torch.manual_seed(0)
    g = LossGenerator(2, dim=8, num_blocks=1, heads=2)
    x = torch.rand(2, 2, 12, 17)
    assert float((g(x.flip(1)) - g(x).flip(1)).abs().max()) > 1e-3


def test_starts_at_exactly_one_over_k_and_learns_from_there():
    torch.manual_seed(0)
    g = get_loss_generator("lpn-equivariant", 3, dim=8, num_blocks=1, heads=2)
    x = torch.rand(2, 3, 9, 13)
    w = g(x)
    assert torch.allclose(w, torch.full_like(w, 1 / 3), atol=1e-7) and w.shape == x.shape
    # the zero last layer still receives a gradient: G can move away from 1/K
    (w[:, 0] * x[:, 0]).sum().backward()
    assert float(g.out3.weight.grad.abs().max()) > 0


def test_forward_mode_differentiable_for_the_meta_step():
    g = trained_like(2)
    x = torch.rand(1, 2, 8, 8)
    params = dict(g.named_parameters())
    tangents = {k: torch.randn_like(v) for k, v in params.items()}
    out, dout = jvp(lambda p: torch.func.functional_call(g, p, (x,)), (params,), (tangents,))
    assert out.shape == dout.shape == (1, 2, 8, 8)
    assert torch.allclose(dout.sum(dim=1), torch.zeros(1, 8, 8), atol=1e-6)  # weights keep summing to one
