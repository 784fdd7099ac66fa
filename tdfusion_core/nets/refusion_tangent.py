"""ReFusion's linearized pass: one recorded forward, then the output's derivative along any parameter tangent.

The meta step (Eq. 7, mode ``jvp``) needs F's output at θF for the inner gradient (step 1) and, once ``v`` is known
(step 3), the forward-mode derivative ``J_F v`` at the same θF (step 4). ``torch.func.jvp`` computes F's forward a
second time alongside the tangent. :func:`linearize` runs the fast pass (:func:`~.refusion_fast.fast_forward`) once,
keeping its intermediates; the returned map computes only the tangent, layer by layer in the same order:

* 3x3 and 1x1 convolutions (linear in input and weight): ``d(W x + b) = W dx + dW x + db``;
* the channel LayerNorm ``γ x̂ + β``: ``γ · dx̂ + dγ · x̂ + dβ``, where ``dx̂ = rstd · (dx − mean(dx) − x̂ · mean(x̂ dx))``
  is what LayerNorm's backward kernel computes from ``dx`` (the normalisation's Jacobian is symmetric);
* GELU, LeakyReLU and the sigmoid: their backward kernels (derivative times the tangent); products by the product
  rule; the Gram matrices ``d(Xᵀ X) = dXᵀ X + Xᵀ dX``;
* the ``C x C`` attention matrices (small): ``torch.func.jvp`` of the same function.

Two-source ReFusion only (its fusion module's queries are the other branch's); ``tests/test_refusion_tangent.py``
compares the map with ``torch.func.jvp`` of the layers in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch.func import jvp

from tdfusion_core.nets.blocks import TransformerBlock
from tdfusion_core.nets.gram import cross_gram_tangent, symmetric_gram_tangent
from tdfusion_core.nets.refusion import AdaptiveFusion, FusionNet
from tdfusion_core.nets.refusion_fast import (
    Tape,
    _attention_matrix,
    _gram_parts,
    _nchw,
    _nhwc,
    _split_qkv,
    fast_forward,
)

#: ``{parameter name: tangent}`` -> ``J_F v`` ``(B, 1, H, W)``
TangentMap = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]


def linearize(net: FusionNet, x: torch.Tensor) -> tuple[torch.Tensor, TangentMap]:
    """``F(x)`` by the fast pass (differentiable as usual) and the map ``v -> J_F v`` at the parameters of this call.

    ``v`` holds tangents by parameter name (``net.named_parameters()``); a parameter it leaves out has tangent zero.
    The map may be called after the parameters changed or were substituted back: it uses the values of this call.
    """
    if net.num_sources != 2:
        raise ValueError(f"the linearized pass covers two-source ReFusion, not {net.num_sources} sources")
    tape: Tape = []
    out = fast_forward(net, x, tape=tape)
    params = {name: p.detach().clone() for name, p in net.named_parameters()}  # the point, whatever changes later
    prefixes = {id(m): f"{name}." if name else "" for name, m in net.named_modules()}

    def tangent(v: Mapping[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return _Tangent(net, params, prefixes, v).network(iter(tape))

    return out, tangent


def _gelu_tangent(pre: torch.Tensor, d_pre: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.gelu_backward(d_pre, pre)


class _Tangent:
    """One replay of a recorded pass along the parameter tangents ``v``; primal weights from ``params``."""

    def __init__(
        self,
        net: FusionNet,
        params: Mapping[str, torch.Tensor],
        prefixes: Mapping[int, str],
        v: Mapping[str, torch.Tensor],
    ) -> None:
        self.net, self.params, self.prefixes, self.v = net, params, prefixes, v

    # ------------------------------------------------------------------ parameters and their tangents
    def weight(self, module: Any, attr: str = "weight") -> torch.Tensor:
        return self.params[self.prefixes[id(module)] + attr]

    def d(self, module: Any, attr: str = "weight") -> torch.Tensor:
        """The tangent of ``module``'s parameter ``attr`` (zero when ``v`` leaves it out)."""
        name = self.prefixes[id(module)] + attr
        return self.v[name] if name in self.v else torch.zeros_like(self.params[name])

    def d_bias(self, conv: Any) -> torch.Tensor | None:
        """The tangent of a convolution's bias; ``None`` when it has none."""
        return None if conv.bias is None else self.d(conv, "bias")

    # ------------------------------------------------------------------ layers
    def conv3x3(self, x: torch.Tensor, dx: torch.Tensor | None, conv: Any, part: slice | None = None) -> torch.Tensor:
        """Tangent of a 3x3 convolution of the NHWC map ``x`` (its output channels ``part`` of a depth-wise one)."""
        weight, d_weight, d_bias = self.weight(conv), self.d(conv), self.d_bias(conv)
        groups = conv.groups
        if part is not None:
            weight, d_weight = weight[part], d_weight[part]
            d_bias = None if d_bias is None else d_bias[part]
            groups = weight.shape[0]

        def conv2d(inp: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
            w = w.contiguous(memory_format=torch.channels_last)
            return F.conv2d(_nchw(inp), w, b, padding=conv.padding, groups=groups)

        out = conv2d(x, d_weight, d_bias)
        if dx is not None:
            out.add_(conv2d(dx, weight))
        return _nhwc(out)

    def pointwise(
        self,
        x: torch.Tensor,
        dx: torch.Tensor,
        conv: Any,
        part: slice | None = None,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Tangent of a 1x1 convolution of ``x`` as a matrix product (its output channels ``part``), plus the
        tangent ``residual`` of a residual ``h + conv1x1(x)`` when given."""
        channels = conv.weight.shape[0]
        weight, d_weight = self.weight(conv).reshape(channels, -1), self.d(conv).reshape(channels, -1)
        d_bias = self.d_bias(conv)
        if part is not None:
            weight, d_weight = weight[part], d_weight[part]
            d_bias = None if d_bias is None else d_bias[part]
        b, hh, ww, c = x.shape
        rows, d_rows = x.reshape(-1, c), dx.reshape(-1, c)
        if residual is None:
            out = rows @ d_weight.t()
        else:
            out = torch.addmm(residual.reshape(rows.shape[0], -1), rows, d_weight.t())
        out.addmm_(d_rows, weight.t())
        if d_bias is not None:
            out.add_(d_bias)
        return out.view(b, hh, ww, -1)

    def norm(self, h: torch.Tensor, d_h: torch.Tensor, norm: Any) -> torch.Tensor:
        """Tangent of the channel LayerNorm ``γ x̂ + β`` of ``h`` (module docstring)."""
        c = h.shape[-1]
        x_hat, mean, rstd = torch.native_layer_norm(h, (c,), None, None, norm.eps)
        d_hat = torch.ops.aten.native_layer_norm_backward(d_h, h, (c,), mean, rstd, None, None, [True, False, False])[0]
        out = torch.addcmul(self.d(norm.body, "bias"), x_hat, self.d(norm.body))
        return out.addcmul_(d_hat, self.weight(norm.body))

    def parts(
        self, x: torch.Tensor, dx: torch.Tensor, pointwise: Any, depthwise: Any, records: list[dict[str, Any]]
    ) -> list[torch.Tensor]:
        """Tangents of :func:`~.refusion_fast._pointwise_depthwise_parts`, part by part."""
        width = pointwise.weight.shape[0] // len(records)
        out = []
        for i, record in enumerate(records):
            part = slice(i * width, (i + 1) * width)
            d_mixed = self.pointwise(x, dx, pointwise, part)
            out.append(self.conv3x3(record["mixed"], d_mixed, depthwise, part))
        return out

    def attention(
        self, primals: tuple[torch.Tensor, ...], tangents: tuple[torch.Tensor, ...], module: Any, attr: str, heads: int
    ) -> torch.Tensor:
        """Tangent of :func:`~.refusion_fast._attention_matrix` (``C x C`` per item: torch.func.jvp is cheap)."""
        temperature = self.weight(module, attr)
        result = jvp(
            lambda g, q, k, t: _attention_matrix(g, q, k, t, heads),
            (*primals, temperature),
            (*tangents, self.d(module, attr)),
        )
        return cast(torch.Tensor, result[1])

    def attend_project(
        self,
        d_residual: torch.Tensor,
        v: torch.Tensor,
        d_v: torch.Tensor,
        attn: torch.Tensor,
        d_attn: torch.Tensor,
        conv: Any,
    ) -> torch.Tensor:
        """Tangent of :func:`~.refusion_fast._attend_project`: ``residual + v (W A)ᵀ + b`` per pixel."""
        b, hh, ww, c = d_residual.shape
        weight = self.weight(conv).reshape(conv.weight.shape[0], -1)
        d_weight = self.d(conv).reshape(weight.shape)
        folded_t = (weight[None] @ attn).transpose(1, 2)
        d_folded_t = (weight[None] @ d_attn + d_weight[None] @ attn).transpose(1, 2)
        vv, d_vv = v.reshape(b, hh * ww, -1), d_v.reshape(b, hh * ww, -1)
        out = torch.baddbmm(d_residual.reshape(b, hh * ww, c), d_vv, folded_t).baddbmm_(vv, d_folded_t)
        d_bias = self.d_bias(conv)
        return (out if d_bias is None else out + d_bias).view(b, hh, ww, c)

    @staticmethod
    def gram(qk: torch.Tensor, d_qk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tangents of :func:`~.refusion_fast._qk_gram`: ``qᵀk``, ``‖q‖²``, ``‖k‖²``."""
        return _gram_parts(symmetric_gram_tangent(qk, d_qk))

    # ------------------------------------------------------------------ the network, in the forward's order
    def block(self, block: TransformerBlock, d_h: torch.Tensor, tape: Iterator[dict[str, Any]]) -> torch.Tensor:
        attn_mod, ffn = block.attn, block.ffn
        r = next(tape)
        d_normed = self.norm(r["h"], d_h, block.norm1)
        d_mixed = self.pointwise(r["normed"], d_normed, attn_mod.qkv)
        d_qk, d_v = _split_qkv(self.conv3x3(r["mixed"], d_mixed, attn_mod.qkv_dwconv))
        d_attn = self.attention(
            (r["gram"], r["q_sq"], r["k_sq"]), self.gram(r["qk"], d_qk), attn_mod, "temperature", attn_mod.num_heads
        )
        d_h = self.attend_project(d_h, r["v"], d_v, r["attn"], d_attn, attn_mod.project_out)
        part_records = [next(tape), next(tape)]
        r = next(tape)
        d_normed = self.norm(r["h"], d_h, block.norm2)
        d_gate, d_value = self.parts(r["normed"], d_normed, ffn.project_in, ffn.dwconv, part_records)
        d_gated = (r["act"] * d_value).addcmul_(_gelu_tangent(r["gate"], d_gate), r["value"])
        return self.pointwise(r["gated"], d_gated, ffn.project_out, residual=d_h)

    def fusion_module(
        self, fm: AdaptiveFusion, d_branches: list[torch.Tensor], tape: Iterator[dict[str, Any]]
    ) -> torch.Tensor:
        n = len(d_branches)
        records = [next(tape) for _ in range(n)]
        d_qkv = [
            self.conv3x3(r["pre"], self.pointwise(r["x"], d_x, fm._sub("qkv", i)), getattr(fm, f"qkv{i + 1}_dwconv"))
            for i, (r, d_x) in enumerate(zip(records, d_branches))
        ]
        splits = [_split_qkv(t) for t in d_qkv]
        q = [r["qk"].chunk(2, dim=-1) for r in records]
        dq = [d_qk.chunk(2, dim=-1) for d_qk, _ in splits]
        d_mixed = []
        for i, r in enumerate(records):
            j = 1 - i  # two sources: branch i is queried by the other branch
            query, d_query, k, d_k = q[j][0], dq[j][0], q[i][1], dq[i][1]
            d_gram = cross_gram_tangent(query, d_query, k, d_k)
            d_query_sq = 2 * (query * d_query).sum(dim=1)
            d_k_sq = 2 * (k * d_k).sum(dim=1)
            d_attn = self.attention(
                (r["gram"], r["query_sq"], r["k_sq"]),
                (d_gram, d_query_sq, d_k_sq),
                fm,
                f"temperature{i + 1}",
                fm.num_heads,
            )
            d_mixed.append(
                self.attend_project(d_branches[i], r["v"], splits[i][1], r["attn"], d_attn, fm._sub("project_mid", i))
            )
        d_out = torch.cat(d_mixed, dim=-1)
        part_records = [next(tape) for _ in range(n)]
        r = next(tape)
        d_gates = self.parts(r["out"], d_out, fm.project_E, fm.project_E_d, part_records)
        gates = r["gates"]
        for i in range(n):
            r = next(tape)
            d_pre = self.pointwise(r["x"], d_mixed[i], fm._sub("project_E", i))
            d_expanded = self.conv3x3(r["pre"], d_pre, getattr(fm, f"project_E{i + 1}_d"))
            d_z = (r["act"] * d_expanded).addcmul_(_gelu_tangent(gates[i], d_gates[i]), r["expanded"])
            d_out = self.pointwise(r["z"], d_z, fm._sub("project_out", i), residual=d_out)
        return d_out

    def network(self, tape: Iterator[dict[str, Any]]) -> torch.Tensor:
        net = self.net
        d_branches = []
        for k in range(net.num_sources):
            d_h = self.conv3x3(next(tape)["x"], None, getattr(net, f"project_in_{k + 1}"))
            for block in getattr(net, f"encoder{k + 1}"):
                d_h = self.block(block, d_h, tape)
            d_branches.append(d_h)
        d_out = self.fusion_module(net.FM, d_branches, tape)
        for block in cast(list[TransformerBlock], net.decoder):
            d_out = self.block(block, d_out, tape)
        r = next(tape)
        d_pre_act = self.conv3x3(r["features"], d_out, net.project_out_0)
        d_act = torch.ops.aten.leaky_relu_backward(d_pre_act, r["pre_act"], net.act.negative_slope, False)
        d_last = self.conv3x3(r["act"], d_act, net.project_out_1)
        return torch.ops.aten.sigmoid_backward(_nchw(d_last), r["fused"])
