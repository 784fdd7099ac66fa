"""Restormer-style building blocks shared by the fusion network and the loss generator.

These follow the blocks of the reference code (TDFusion's ``nets/ReFusion.py``, after Restormer, Zamir et al. 2022):
a channel LayerNorm with bias, multi-Dconv-head transposed attention (MDTA: attention across channels, so its cost is
linear in the number of pixels and any image size works) and a gated-Dconv feed-forward network (GDFN). The
reference wraps every convolution in a ``MetaConv2d`` that stores a second copy of the weights for its meta step; here
they are plain :class:`torch.nn.Conv2d`, and the meta step substitutes parameters with
:func:`torch.func.functional_call` instead. Parameter names are the reference's minus that duplication, so published
state dicts load after dropping the ``X.conv.weight`` copies (see :mod:`tdfusion_core.training.checkpoints`).

Every operation here supports forward-mode automatic differentiation (``torch.func.jvp``), which the meta step needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel dimension of a ``(B, C, H, W)`` map, with weight and bias (eps 1e-5).

    Same maths as the reference's ``LayerNorm(WithBias_LayerNorm)``, which normalises each pixel's channel vector.
    The parameters live in a child called ``body`` so the state-dict keys match the reference.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.body = _LayerNormParams(dim)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Written out (two-pass mean and variance, as the reference) rather than through F.layer_norm: in float32
        # F.layer_norm's kernel departs from the reference's output by up to 1e-5 after the whole network, this form
        # by 5e-7. The variance is the mean of the squared deviations, which are needed anyway: on the CPU that is
        # 2.5x faster than torch.var over the (strided) channel dimension.
        centred = x - x.mean(dim=1, keepdim=True)
        var = (centred * centred).mean(dim=1, keepdim=True)
        weight = self.body.weight[:, None, None]
        bias = self.body.bias[:, None, None]
        return centred / torch.sqrt(var + self.eps) * weight + bias


class _LayerNormParams(nn.Module):
    """Holder of the LayerNorm parameters (``weight`` ones, ``bias`` zeros)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, heads*c, H, W) -> (B, heads, c, H*W)``."""
    b, ch, h, w = x.shape
    return x.reshape(b, heads, ch // heads, h * w)


def channel_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, temperature: torch.Tensor, normalized: bool = False
) -> torch.Tensor:
    """Transposed (channel) attention of ``(B, heads, c, N)`` tensors: ``softmax(q̂ k̂ᵀ · t) v``.

    ``q`` and ``k`` are L2-normalised along the pixels first (skipped when ``normalized`` says they already are);
    ``temperature`` is ``(heads, 1, 1)``. The attention matrix is only ``c × c`` per head.
    """
    if not normalized:
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
    attn = (q @ k.transpose(-2, -1)) * temperature
    return attn.softmax(dim=-1) @ v


class MDTA(nn.Module):
    """Multi-Dconv-head transposed self-attention: 1×1 conv to q, k, v, 3×3 depth-wise conv, channel attention."""

    def __init__(self, dim: int, num_heads: int, bias: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by its {num_heads} heads")
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, kernel_size=3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        heads = self.num_heads
        out = channel_attention(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads), self.temperature)
        return self.project_out(out.reshape(b, c, h, w))


class GDFN(nn.Module):
    """Gated-Dconv feed-forward network: 1×1 conv to 2·hidden, 3×3 depth-wise conv, ``gelu(x1) * x2``, 1×1 conv."""

    def __init__(self, dim: int, ffn_expansion_factor: float = 2.0, bias: bool = False) -> None:
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, kernel_size=3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class TransformerBlock(nn.Module):
    """Pre-norm Restormer block: ``x + MDTA(LN(x))`` then ``x + GDFN(LN(x))``."""

    def __init__(self, dim: int, num_heads: int, ffn_expansion_factor: float = 2.0, bias: bool = False) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim)
        self.attn = MDTA(dim, num_heads, bias)
        self.norm2 = ChannelLayerNorm(dim)
        self.ffn = GDFN(dim, ffn_expansion_factor, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def check_sources(x: torch.Tensor, num_sources: int, who: str) -> None:
    """Raise a clear error unless ``x`` is ``(B, num_sources, H, W)``."""
    if x.ndim != 4 or x.shape[1] != num_sources:
        raise ValueError(f"{who} expects sources of shape (B, {num_sources}, H, W), got {tuple(x.shape)}")


def check_net_size(what: str, num_sources: int, dim: int, num_blocks: int) -> None:
    """Raise a clear error unless the network ``what`` has at least 2 sources and a positive width and depth."""
    if num_sources < 2:
        raise ValueError(f"{what} needs at least 2 sources, got {num_sources}")
    if num_blocks < 1 or dim < 1:
        raise ValueError(f"dim and num_blocks must be positive, got dim={dim}, num_blocks={num_blocks}")


def add_source_branches(
    module: nn.Module,
    embed: str,
    num_sources: int,
    dim: int,
    num_blocks: int,
    heads: int,
    ffn_expansion_factor: float,
    bias: bool,
) -> None:
    """Register the reference networks' per-source branches on ``module``, for k = 1..K: a 3×3 convolution named
    ``embed.format(k=k)`` (1 → ``dim``), then ``num_blocks`` Restormer blocks ``encoder{k}``. All convolutions come
    first, as the reference registers them, so seeded weights are drawn in the reference's order."""
    for k in range(1, num_sources + 1):
        module.add_module(embed.format(k=k), nn.Conv2d(1, dim, kernel_size=3, padding=1, bias=bias))
    for k in range(1, num_sources + 1):
        module.add_module(
            f"encoder{k}",
            nn.ModuleList(TransformerBlock(dim, heads, ffn_expansion_factor, bias) for _ in range(num_blocks)),
        )


def encode_sources(module: nn.Module, x: torch.Tensor, embed: str) -> list[torch.Tensor]:
    """Each source ``x[:, k]`` through its branch of :func:`add_source_branches`: the K branches' features."""
    branches = []
    for k in range(x.shape[1]):
        feat = getattr(module, embed.format(k=k + 1))(x[:, k : k + 1])
        for block in getattr(module, f"encoder{k + 1}"):
            feat = block(feat)
        branches.append(feat)
    return branches
