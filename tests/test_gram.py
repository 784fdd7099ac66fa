"""The Gram products of ``nets/gram.py`` against autograd's own derivatives of ``aᵀa`` and ``aᵀb``: finite
differences (reverse, forward and second order) and torch.func transforms."""

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.func import jacfwd, jacrev, jvp, vmap

from tdfusion_core.nets.gram import cross_gram, symmetric_gram


def _rows(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(True)


def test_values_are_the_plain_products() -> None:
    a, b = _rows(2, 50, 4), _rows(2, 50, 3, seed=1)
    torch.testing.assert_close(symmetric_gram(a), a.transpose(1, 2) @ a, rtol=0, atol=1e-12)
    torch.testing.assert_close(cross_gram(a, b), a.transpose(1, 2) @ b, rtol=0, atol=1e-12)


def test_symmetric_gram_derivatives_match_finite_differences() -> None:
    a = _rows(2, 7, 3)
    assert gradcheck(symmetric_gram, (a,), check_forward_ad=True, check_backward_ad=True)
    assert gradgradcheck(symmetric_gram, (a,))


@pytest.mark.parametrize("which", ["a", "b", "both"])
def test_cross_gram_derivatives_match_finite_differences(which: str) -> None:
    a, b = _rows(2, 7, 3), _rows(2, 7, 2, seed=1)
    a.requires_grad_(which in ("a", "both"))
    b.requires_grad_(which in ("b", "both"))
    assert gradcheck(cross_gram, (a, b), check_forward_ad=True, check_backward_ad=True)
    assert gradgradcheck(cross_gram, (a, b))


def test_gradients_of_a_strided_view_equal_autograd_of_the_plain_product() -> None:
    """The pass hands in ``[q k]`` as a view inside the ``qkv`` map (row stride 3C, not 2C)."""
    qkv = _rows(2, 30, 6)
    weights = torch.randn(2, 4, 4, dtype=torch.float64)
    ours = torch.autograd.grad((symmetric_gram(qkv[..., :4]) * weights).sum(), qkv)[0]
    plain = torch.autograd.grad(((qkv[..., :4].transpose(1, 2) @ qkv[..., :4]) * weights).sum(), qkv)[0]
    torch.testing.assert_close(ours, plain, rtol=0, atol=1e-12)


def test_func_transforms_agree_with_the_plain_products() -> None:
    a, b = _rows(2, 9, 3).detach(), _rows(2, 9, 3, seed=1).detach()
    da = torch.randn_like(a)
    ours, tangent = jvp(symmetric_gram, (a,), (da,))
    plain, ref_tangent = jvp(lambda x: x.transpose(1, 2) @ x, (a,), (da,))
    torch.testing.assert_close(ours, plain, rtol=0, atol=1e-12)
    torch.testing.assert_close(tangent, ref_tangent, rtol=0, atol=1e-12)
    torch.testing.assert_close(jacrev(cross_gram)(a, b), jacfwd(lambda x, y: x.transpose(1, 2) @ y)(a, b))
    batched = vmap(symmetric_gram)(a[:, None].expand(2, 3, 9, 3))
    torch.testing.assert_close(batched[:, 0], plain, rtol=0, atol=1e-12)


def test_a_low_precision_gradient_comes_back_in_the_input_dtype() -> None:
    """Under autocast the product and its incoming gradient can be bfloat16 while the input is float32."""
    a = torch.randn(1, 16, 4, requires_grad=True)
    out = symmetric_gram(a)
    (grad,) = torch.autograd.grad(out, a, torch.ones(1, 4, 4, dtype=torch.bfloat16))
    assert grad.dtype == torch.float32
    torch.testing.assert_close(grad, a.detach() @ torch.full((1, 4, 4), 2.0), rtol=1e-2, atol=1e-2)  # bf16 products
