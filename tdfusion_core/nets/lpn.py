"""The loss generator ``G``: TDFusion's LPN ("loss parameter network"), generalised to K ≥ 2 sources.

Architecture (reference: TDFusion's ``nets/ReFusion.py``, class ``LPN(dim=16, num_blocks=2, heads=[8, 8, 8],
ffn_expansion_factor=2, bias=False)``, of which only ``heads[0]`` is used):

1. per source ``k``: a 3×3 patch embedding ``patch_embed{k}`` (1 → ``dim``) and ``num_blocks`` Restormer blocks
   ``encoder{k}`` (:mod:`tdfusion_core.nets.blocks`);
2. the branches concatenated (``K·dim`` channels) and ``num_blocks`` joint Restormer blocks, named
   ``encoder{K+1}`` (``encoder3`` for two sources, as in the reference);
3. a conv head: 3×3 conv ``out1`` to ``dim``, PReLU ``out2``, 3×3 conv ``out3`` to ``K`` channels;
4. a softmax over the sources, so the K per-pixel weights are positive and sum to one.

With two sources the parameter names are the reference's (minus its duplicated ``X.conv.weight`` entries and the
``module.`` prefix its ``DataParallel`` wrapper adds).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from tdfusion_core.nets.blocks import (
    TransformerBlock,
    add_source_branches,
    check_net_size,
    check_sources,
    encode_sources,
)


class LossGenerator(nn.Module):
    """LPN loss generator: ``(B, K, H, W)`` sources -> per-pixel weights ``(B, K, H, W)`` summing to 1 over K.

    Args:
        num_sources: number of sources K (≥ 2).
        dim: feature width of each source branch (reference 16); the joint blocks are ``K·dim`` wide.
        num_blocks: Restormer blocks per source branch and in the joint stage (reference 2).
        heads: attention heads of the source branches (reference 8; must divide ``dim``).
        joint_heads: attention heads of the joint blocks (default: ``heads``, as the reference).
        ffn_expansion_factor: hidden width of the feed-forward networks relative to their input (reference 2).
        bias: whether convolutions have a bias (reference ``False``).
    """

    #: Inputs need no padding (stride-1 layers, attention across channels).
    size_multiple: int = 1
    #: another implementation of this same function, ``(net, x) -> weights``, that :meth:`forward` runs instead of
    #: the layers' own forwards (set per network by :func:`tdfusion_core.nets.training_passes.use_fast_pass`)
    forward_pass: Callable[[LossGenerator, torch.Tensor], torch.Tensor] | None = None

    # Argument list and layer names as in the reference constructor (TDFusion's nets/ReFusion.py), so released
    # weights load unchanged: the nets' constructors look alike by design, not by copy.
    def __init__(
        self,
        num_sources: int = 2,
        dim: int = 16,
        num_blocks: int = 2,
        heads: int = 8,
        joint_heads: int | None = None,
        ffn_expansion_factor: float = 2.0,
        bias: bool = False,
    ) -> None:
        super().__init__()
        check_net_size("a loss generator", num_sources, dim, num_blocks)
        joint_heads = heads if joint_heads is None else joint_heads
        self.num_sources = num_sources
        self.config: dict[str, Any] = {
            "dim": dim,
            "num_blocks": num_blocks,
            "heads": heads,
            "joint_heads": joint_heads,
            "ffn_expansion_factor": ffn_expansion_factor,
            "bias": bias,
        }
        add_source_branches(self, "patch_embed{k}", num_sources, dim, num_blocks, heads, ffn_expansion_factor, bias)
        wide = dim * num_sources
        self.add_module(
            f"encoder{num_sources + 1}",
            nn.ModuleList(TransformerBlock(wide, joint_heads, ffn_expansion_factor, bias) for _ in range(num_blocks)),
        )
        self.out1 = nn.Conv2d(wide, dim, kernel_size=3, padding=1, bias=bias)
        self.out2 = nn.PReLU(num_parameters=1, init=0.25)
        self.out3 = nn.Conv2d(dim, num_sources, kernel_size=3, padding=1, bias=bias)

    @property
    def joint(self) -> nn.ModuleList:
        """The joint Restormer blocks (``encoder{K+1}``)."""
        blocks: nn.ModuleList = getattr(self, f"encoder{self.num_sources + 1}")
        return blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel source weights ``(B, K, H, W)``: a softmax over the K channels."""
        if self.forward_pass is not None:
            return self.forward_pass(self, x)
        check_sources(x, self.num_sources, "LossGenerator")
        out = torch.cat(encode_sources(self, x, "patch_embed{k}"), dim=1)
        for block in self.joint:
            out = block(out)
        out = self.out3(self.out2(self.out1(out)))
        return out.softmax(dim=1)


def build_lpn(num_sources: int = 2, **config: Any) -> LossGenerator:
    """Registry factory for loss-generator architecture ``lpn`` (keyword config: see :class:`LossGenerator`)."""
    return LossGenerator(num_sources=num_sources, **config)
