"""The ReFusion fusion network used by TDFusion as ``F``, generalised to K ≥ 2 sources.

Architecture (reference: TDFusion's ``nets/ReFusion.py``, ``ReFusion(dim=16, num_blocks=2, heads=8,
ffn_expansion_factor=2, bias=False)``, 59,856 parameters for two sources):

1. per source ``k``: a 3×3 convolution ``project_in_k`` (1 → ``dim`` channels) and ``num_blocks`` Restormer blocks
   ``encoder{k}`` (MDTA attention + gated-Dconv feed-forward, :mod:`tdfusion_core.nets.blocks`);
2. the adaptive fusion module ``FM`` (:class:`AdaptiveFusion`): cross attention between the branches, then a gate
   computed from all branches that modulates each branch's expanded features;
3. ``num_blocks`` Restormer blocks ``decoder`` of width ``K·dim``, a 3×3 convolution to ``dim``, LeakyReLU(0.01),
   a 3×3 convolution to one channel, and a sigmoid.

Every layer is stride 1 and the attention is across channels, so the network takes any image size: it needs no padding
(``size_multiple = 1``); padding would even change the result, since attention pools over the whole image. With
two sources the state-dict keys are exactly the reference's (after dropping its duplicated ``X.conv.weight``
entries), so the published ``ReFusion_IVIF.pth`` and the TDFusion release checkpoints load unchanged through
:func:`tdfusion_core.training.checkpoints.load_model_checkpoint`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tdfusion_core.nets.blocks import (
    TransformerBlock,
    add_source_branches,
    channel_attention,
    check_net_size,
    check_sources,
    encode_sources,
    split_heads,
)


class AdaptiveFusion(nn.Module):
    """Adaptive fusion module (the reference's ``AFM``) for K branches of ``dim`` channels each.

    For each branch ``i``: q, k, v by a 1×1 and a depth-wise 3×3 convolution; attention of the branch's keys and
    values queried by the *other* branch (two sources: branch 1 is queried by branch 2 and vice versa, as in the
    reference; K > 2: by the re-normalised mean of the other branches' normalised queries); a residual 1×1
    projection. The concatenated branches ``out`` then give K gates (1×1 conv to ``4·K·dim``, depth-wise 3×3, split
    in K), each multiplying ``gelu(gate_i)`` with branch ``i`` expanded to ``4·dim``; the result is
    ``out + Σ_i project_out_i(...)`` with ``K·dim`` channels.

    Parameters are named ``qkv{i}``, ``temperature{i}``, ``project_E{i}`` ... (1-based) as in the reference.
    """

    def __init__(self, dim: int = 16, num_heads: int = 8, bias: bool = False, num_sources: int = 2) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"fusion width {dim} is not divisible by its {num_heads} heads")
        self.num_heads = num_heads
        self.num_sources = num_sources
        k_all = num_sources
        for i in range(1, k_all + 1):
            self.register_parameter(f"temperature{i}", nn.Parameter(torch.ones(num_heads, 1, 1)))
        for i in range(1, k_all + 1):
            self.add_module(f"qkv{i}", nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias))
            self.add_module(
                f"qkv{i}_dwconv", nn.Conv2d(dim * 3, dim * 3, kernel_size=3, padding=1, groups=dim * 3, bias=bias)
            )
        for i in range(1, k_all + 1):
            self.add_module(f"project_mid{i}", nn.Conv2d(dim, dim, kernel_size=1, bias=bias))
        wide = dim * 4 * k_all
        self.project_E = nn.Conv2d(dim * k_all, wide, kernel_size=1, bias=bias)
        self.project_E_d = nn.Conv2d(wide, wide, kernel_size=3, padding=1, groups=wide, bias=bias)
        for i in range(1, k_all + 1):
            self.add_module(f"project_E{i}", nn.Conv2d(dim, dim * 4, kernel_size=1, bias=bias))
            self.add_module(
                f"project_E{i}_d", nn.Conv2d(dim * 4, dim * 4, kernel_size=3, padding=1, groups=dim * 4, bias=bias)
            )
        for i in range(1, k_all + 1):
            self.add_module(f"project_out{i}", nn.Conv2d(dim * 4, dim * k_all, kernel_size=1, bias=bias))

    def _sub(self, name: str, i: int) -> nn.Module:
        module: nn.Module = getattr(self, f"{name}{i + 1}")
        return module

    def forward(self, branches: list[torch.Tensor]) -> torch.Tensor:
        """Fuse ``K`` feature maps ``(B, dim, H, W)`` into one ``(B, K·dim, H, W)``."""
        b, c, h, w = branches[0].shape
        heads = self.num_heads
        qs, ks, vs = [], [], []
        for i, x in enumerate(branches):
            qkv = getattr(self, f"qkv{i + 1}_dwconv")(self._sub("qkv", i)(x))
            q, k, v = qkv.chunk(3, dim=1)
            qs.append(F.normalize(split_heads(q, heads), dim=-1))
            ks.append(F.normalize(split_heads(k, heads), dim=-1))
            vs.append(split_heads(v, heads))
        mixed = []
        n = len(branches)
        for i, x in enumerate(branches):
            others = [qs[j] for j in range(n) if j != i]
            query = others[0] if len(others) == 1 else F.normalize(torch.stack(others).mean(0), dim=-1)
            temperature = getattr(self, f"temperature{i + 1}")
            attended = channel_attention(query, ks[i], vs[i], temperature, normalized=True).reshape(b, c, h, w)
            mixed.append(x + self._sub("project_mid", i)(attended))
        out = torch.cat(mixed, dim=1)
        gates = self.project_E_d(self.project_E(out)).chunk(n, dim=1)
        for i, x in enumerate(mixed):
            expanded = getattr(self, f"project_E{i + 1}_d")(self._sub("project_E", i)(x))
            out = out + self._sub("project_out", i)(F.gelu(gates[i]) * expanded)
        return out


class FusionNet(nn.Module):
    """ReFusion fusion network: ``(B, K, H, W)`` source luminances in [0, 1] -> fused luminance ``(B, 1, H, W)``.

    Args:
        num_sources: number of sources K (≥ 2); source ``k`` is channel ``k`` of the input (infrared first, then
            visible, for the published weights).
        dim: feature width of each branch (reference 16).
        num_blocks: Restormer blocks per encoder branch and in the decoder (reference 2).
        heads: attention heads of every attention layer (reference 8; must divide ``dim``).
        ffn_expansion_factor: hidden width of the feed-forward networks relative to their input (reference 2).
        bias: whether convolutions have a bias (reference ``False``).

    A plain :class:`torch.nn.Module` with one copy of each parameter, so :func:`torch.func.functional_call` and
    :func:`torch.func.jvp` (forward-mode AD) work on it. ``size_multiple`` is 1: any image size is accepted.
    """

    #: Inputs need no padding: every layer is stride 1 and the attention spans the whole image.
    size_multiple: int = 1
    #: another implementation of this same function, ``(net, x) -> output``, that :meth:`forward` runs instead of
    #: the layers' own forwards (set per network by :func:`tdfusion_core.nets.training_passes.use_fast_pass`)
    forward_pass: Callable[[FusionNet, torch.Tensor], torch.Tensor] | None = None
    #: ``(net, x) -> (net(x), v -> J v)``: the output and its derivative along parameter tangents, from one recorded
    #: forward (set with the fast pass, :func:`tdfusion_core.nets.refusion_tangent.linearize`); the meta step uses it
    linearized_pass: Callable[[FusionNet, torch.Tensor], tuple[torch.Tensor, Any]] | None = None

    # Argument list and layer names as in the reference constructor (TDFusion's nets/ReFusion.py), so released
    # weights load unchanged: the nets' constructors look alike by design, not by copy.
    def __init__(
        self,
        num_sources: int = 2,
        dim: int = 16,
        num_blocks: int = 2,
        heads: int = 8,
        ffn_expansion_factor: float = 2.0,
        bias: bool = False,
    ) -> None:
        super().__init__()
        check_net_size("a fusion network", num_sources, dim, num_blocks)
        self.num_sources = num_sources
        self.config: dict[str, Any] = {
            "dim": dim,
            "num_blocks": num_blocks,
            "heads": heads,
            "ffn_expansion_factor": ffn_expansion_factor,
            "bias": bias,
        }
        add_source_branches(self, "project_in_{k}", num_sources, dim, num_blocks, heads, ffn_expansion_factor, bias)
        self.FM = AdaptiveFusion(dim=dim, num_heads=heads, bias=bias, num_sources=num_sources)
        wide = dim * num_sources
        self.decoder = nn.ModuleList(
            TransformerBlock(wide, heads, ffn_expansion_factor, bias) for _ in range(num_blocks)
        )
        self.project_out_0 = nn.Conv2d(wide, dim, kernel_size=3, padding=1, bias=bias)
        self.act = nn.LeakyReLU()
        self.project_out_1 = nn.Conv2d(dim, 1, kernel_size=3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fuse ``(B, K, H, W)`` sources into ``(B, 1, H, W)`` in (0, 1)."""
        if self.forward_pass is not None:
            return self.forward_pass(self, x)
        check_sources(x, self.num_sources, "FusionNet")
        out = self.FM(encode_sources(self, x, "project_in_{k}"))
        for block in self.decoder:
            out = block(out)
        out = self.project_out_1(self.act(self.project_out_0(out)))
        return torch.sigmoid(out)


def build_refusion(num_sources: int = 2, **config: Any) -> FusionNet:
    """Registry factory for architecture ``refusion`` (keyword config: see :class:`FusionNet`)."""
    return FusionNet(num_sources=num_sources, **config)
