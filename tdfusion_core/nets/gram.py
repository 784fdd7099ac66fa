"""Gram matrices of channels-last maps, ``aᵀa`` and ``aᵀb`` for ``(B, N, C)`` rows, with a backward in row order.

Why: ReFusion's channel attention forms ``qᵀk`` and the squared norms of q and k from the Gram matrix of ``[q k]``,
with N (pixels) far larger than C. Autograd's backward of ``a.transpose(1, 2) @ b`` computes ``∂a`` as ``g bᵀ``, a
``(C, N)`` product written through a transposed view, plus a second product for ``∂b``. Here the backward is
``∂a = b gᵀ``, ``∂b = a g``; for the symmetric Gram ``G = aᵀa`` it is one product, ``∂a = a (g + gᵀ)``. Same
maths, every backward product ``(B, N, C) @ (B, C, C)``; this cuts the attention Gram's forward and backward
2.0-2.4 times on the CPU (``docs/benchmarks.md``). Forward mode (:func:`symmetric_gram_tangent`,
:func:`cross_gram_tangent`, also what ReFusion's tangent map replays): ``dG = daᵀa + aᵀda``,
``d(aᵀb) = daᵀb + aᵀdb``. Both work under ``torch.func`` transforms, and their backward is differentiable (double
backward).
"""

from __future__ import annotations

from typing import Any

import torch


def symmetric_gram(a: torch.Tensor) -> torch.Tensor:
    """``aᵀa`` per batch item: ``(B, N, C)`` -> ``(B, C, C)``."""
    out: torch.Tensor = _Gram.apply(a)
    return out


def cross_gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``aᵀb`` per batch item: ``(B, N, C)``, ``(B, N, D)`` -> ``(B, C, D)``."""
    out: torch.Tensor = _CrossGram.apply(a, b)
    return out


def symmetric_gram_tangent(a: torch.Tensor, da: torch.Tensor) -> torch.Tensor:
    """The tangent of ``aᵀa`` along ``da``: ``daᵀa + aᵀda``, one product and its transpose."""
    half = da.transpose(1, 2) @ a
    return half + half.transpose(1, 2)


def cross_gram_tangent(
    a: torch.Tensor, da: torch.Tensor | None, b: torch.Tensor, db: torch.Tensor | None
) -> torch.Tensor:
    """The tangent of ``aᵀb`` along ``(da, db)``: ``daᵀb + aᵀdb``; a ``None`` tangent is zero (not both)."""
    out = None if da is None else da.transpose(1, 2) @ b
    if db is not None:
        out = a.transpose(1, 2) @ db if out is None else out + a.transpose(1, 2) @ db
    if out is None:
        raise ValueError("cross_gram_tangent needs at least one of da, db")
    return out


def _like(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``a`` in the gradient's dtype: under autocast the product, and so its gradient, is of lower precision, and
    the backward products run in it as autograd's would (autograd casts the result back to the input's dtype)."""
    return a if a.dtype == g.dtype else a.to(g.dtype)


class _Gram(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(a: torch.Tensor) -> torch.Tensor:
        return a.transpose(1, 2) @ a

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        (a,) = ctx.saved_tensors
        return _like(a, g) @ (g + g.transpose(1, 2))

    @staticmethod
    def jvp(ctx: Any, da: torch.Tensor) -> torch.Tensor:
        (a,) = ctx.saved_tensors
        return symmetric_gram_tangent(a, da)


class _CrossGram(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a.transpose(1, 2) @ b

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor, torch.Tensor], output: torch.Tensor) -> None:
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        a, b = ctx.saved_tensors
        da = _like(b, g) @ g.transpose(1, 2) if ctx.needs_input_grad[0] else None
        db = _like(a, g) @ g if ctx.needs_input_grad[1] else None
        return da, db

    @staticmethod
    def jvp(ctx: Any, da: torch.Tensor | None, db: torch.Tensor | None) -> torch.Tensor:
        a, b = ctx.saved_tensors
        return cross_gram_tangent(a, da, b, db)
