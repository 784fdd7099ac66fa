"""A source-order-equivariant loss generator (``lpn-equivariant``): it cannot prefer an input *position*.

The released LPN (:mod:`tdfusion_core.nets.lpn`) has one branch per source and a joint head with one output channel
per source, so it can learn "weight the second input more" whatever that input shows — and the meta-gradient does
push it that way (see docs/concepts.md, "Keeping G from collapsing"). This generator is built so that reordering the
sources reorders its weights and nothing else (``G(x[:, π])  = G(x)[:, π]`` for every permutation π):

1. every source goes through the **same** encoder (a 3×3 patch embedding and ``num_blocks`` Restormer blocks);
2. each source's features are joined with the **mean** of all sources' features (a symmetric summary, DeepSets
   style), and the same joint blocks and conv head turn that into one logit per source and pixel;
3. a softmax across the sources gives the weights.

The head's last convolution starts at zero (``zero_init``), so G starts at exactly ``1/K`` everywhere: the meta-
gradient, not the initialisation, decides what it prefers. This goes beyond the paper; the released LPN stays the
default of the ``released`` profile.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tdfusion_core.nets.blocks import TransformerBlock, check_net_size, check_sources


class EquivariantLossGenerator(nn.Module):
    """``(B, K, H, W)`` sources -> per-pixel weights ``(B, K, H, W)``, a softmax over K, equivariant in K.

    Args:
        num_sources: number of sources K (≥ 2; the weights do not depend on it otherwise).
        dim: feature width of the shared encoder; the joint stage is ``2·dim`` wide (own + mean features).
        num_blocks: Restormer blocks of the shared encoder and of the joint stage.
        heads: attention heads (must divide ``dim``).
        ffn_expansion_factor, bias: as in the released LPN.
        zero_init: start the last convolution at zero, so the first weights are exactly ``1/K``.
    """

    size_multiple: int = 1

    # The argument list is the released LPN's (plus zero_init), so either generator takes the same options: the
    # nets' constructors look alike by design, not by copy.
    def __init__(
        self,
        num_sources: int = 2,
        dim: int = 16,
        num_blocks: int = 2,
        heads: int = 8,
        ffn_expansion_factor: float = 2.0,
        bias: bool = False,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        check_net_size("a loss generator", num_sources, dim, num_blocks)
        self.num_sources = num_sources
        self.config: dict[str, Any] = {
            "dim": dim,
            "num_blocks": num_blocks,
            "heads": heads,
            "ffn_expansion_factor": ffn_expansion_factor,
            "bias": bias,
            "zero_init": zero_init,
        }
        self.patch_embed = nn.Conv2d(1, dim, kernel_size=3, padding=1, bias=bias)
        self.encoder = nn.ModuleList(
            TransformerBlock(dim, heads, ffn_expansion_factor, bias) for _ in range(num_blocks)
        )
        self.joint = nn.ModuleList(
            TransformerBlock(2 * dim, heads, ffn_expansion_factor, bias) for _ in range(num_blocks)
        )
        self.out1 = nn.Conv2d(2 * dim, dim, kernel_size=3, padding=1, bias=bias)
        self.out2 = nn.PReLU(num_parameters=1, init=0.25)
        self.out3 = nn.Conv2d(dim, 1, kernel_size=3, padding=1, bias=bias)
        if zero_init:
            nn.init.zeros_(self.out3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel source weights ``(B, K, H, W)``."""
        check_sources(x, self.num_sources, "EquivariantLossGenerator")
        b, k, h, w = x.shape
        feat = self.patch_embed(x.reshape(b * k, 1, h, w))  # every source through the same encoder
        for block in self.encoder:
            feat = block(feat)
        feat = feat.reshape(b, k, -1, h, w)
        context = feat.mean(dim=1, keepdim=True).expand_as(feat)  # symmetric in the sources
        joint = torch.cat([feat, context], dim=2).reshape(b * k, -1, h, w)
        for block in self.joint:
            joint = block(joint)
        logits = self.out3(self.out2(self.out1(joint))).reshape(b, k, h, w)
        return logits.softmax(dim=1)


def build_lpn_equivariant(num_sources: int = 2, **config: Any) -> EquivariantLossGenerator:
    """Registry factory for ``lpn-equivariant``."""
    return EquivariantLossGenerator(num_sources=num_sources, **config)
