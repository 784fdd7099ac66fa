"""Faster forward passes of ReFusion (:class:`~tdfusion_core.nets.refusion.FusionNet`) and of the LPN loss generator
(:class:`~tdfusion_core.nets.lpn.LossGenerator`), built from the same Restormer blocks: same maths, fewer passes.

Why: at 480x640 the network is 37 GFLOP but memory-bound. Eager PyTorch spends most of its time in depth-wise
convolutions on NCHW maps, in element-wise passes (LayerNorm written out, residual adds, normalising q and k) and,
on machines where fresh memory is expensive, in page faults for new 20-160 MB temporaries. This pass computes the
same function with every feature map kept channels-last (``(B, H, W, C)``, contiguous):

* 1x1 convolutions are matrix products of the ``(B·H·W, C)`` view; the channel LayerNorm is one
  ``F.layer_norm`` over the last dimension (affine included);
* 3x3 convolutions (depth-wise and dense) run on channels-last maps (oneDNN on the CPU, cuDNN NHWC on GPUs);
* the transposed (channel) attention never normalises q and k as tensors: it forms the Gram matrix of ``[q k]``
  with one batched product (``qᵀk`` and, on its diagonal, the squared norms; :mod:`~tdfusion_core.nets.gram`, whose
  backward is one product in row order), divides by the two norm vectors (``F.normalize``'s ``max(‖·‖, 1e-12)``),
  applies the per-head temperature and a block-diagonal softmax (one block per head), and folds the resulting
  ``C x C`` attention into the output projection: ``W_out · A`` applied to ``v`` with one ``baddbmm`` that also adds
  the residual; the fusion module, which uses one branch's q against the other's k, takes that ``qᵀk`` as one
  cross product and the norms as sums of squares;
* inference (``inplace=True``) updates the residual stream in place and frees temporaries early.
* a 1x1 convolution followed by a depth-wise 3x3 whose output is split (the feed-forward gate and value, the
  fusion module's gates) is computed part by part, so each part is contiguous for GELU and its backward.

The LPN loss generator is the same Restormer blocks between other 3x3 convolutions, so its training pass
(:func:`~tdfusion_core.nets.training_passes.lpn_forward`) reuses them.

With ``inplace=False`` every operation is out of place and differentiable (reverse and forward mode), so the same
function can serve training; the result equals the eager network up to floating-point rounding (tests compare
them in float64 to 1e-12, and the published weights' golden outputs in float32).
"""

from __future__ import annotations

import copy
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from tdfusion_core.common.precision import PRECISION_NAMES, precision_dtype
from tdfusion_core.nets.blocks import TransformerBlock, check_sources
from tdfusion_core.nets.gram import cross_gram, symmetric_gram
from tdfusion_core.nets.refusion import AdaptiveFusion, FusionNet

#: ``--precision`` names and the dtype each computes in.
PRECISIONS: dict[str, torch.dtype] = {name: precision_dtype(name) for name in PRECISION_NAMES}

_EPS_NORMALIZE = 1e-12  # F.normalize's default eps


def _nchw(h: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, C)`` contiguous -> the same memory as a channels-last ``(B, C, H, W)`` view."""
    return h.permute(0, 3, 1, 2)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    """Channels-last ``(B, C, H, W)`` (or any layout) -> contiguous ``(B, H, W, C)`` (a view when already so)."""
    return x.permute(0, 2, 3, 1).contiguous()


def _conv3x3(h: torch.Tensor, conv: Any) -> torch.Tensor:
    """A 3x3 convolution (dense or depth-wise) of an NHWC map, returned NHWC."""
    weight = conv.weight.contiguous(memory_format=torch.channels_last)
    out = F.conv2d(_nchw(h), weight, conv.bias, padding=conv.padding, groups=conv.groups)
    return _nhwc(out)


def _pointwise(h: torch.Tensor, conv: Any) -> torch.Tensor:
    """A 1x1 convolution of an NHWC map (or a channel slice of one) as a matrix product; NHWC out."""
    b, hh, ww, c = h.shape
    rows = h.reshape(b * hh * ww, c)
    weight = _matrix(conv)
    out = rows @ weight.t() if conv.bias is None else torch.addmm(conv.bias, rows, weight.t())
    return out.view(b, hh, ww, -1)


def _matrix(conv: Any) -> torch.Tensor:
    return conv.weight.reshape(conv.weight.shape[0], -1)


#: where a recording forward pass (:func:`fast_forward` with ``tape``) leaves the intermediates that
#: :mod:`~tdfusion_core.nets.refusion_tangent` replays, in the order they were computed
Tape = list[dict[str, Any]]


def _record(tape: Tape | None, **tensors: torch.Tensor | list[torch.Tensor]) -> None:
    if tape is not None:
        tape.append(
            {k: v.detach() if isinstance(v, torch.Tensor) else [t.detach() for t in v] for k, v in tensors.items()}
        )


def _pointwise_depthwise_parts(
    h: torch.Tensor, pointwise: Any, depthwise: Any, parts: int, tape: Tape | None = None
) -> list[torch.Tensor]:
    """``depthwise(pointwise(h)).chunk(parts, channels)`` of an NHWC map, each part computed on its own.

    Both layers act on each output channel separately, so a part needs only its rows of the two weights; the parts
    come out contiguous, which element-wise kernels (GELU and its backward) run about twice as fast on as on
    interleaved channel slices.
    """
    b, hh, ww, c = h.shape
    rows = h.reshape(b * hh * ww, c)
    width = pointwise.weight.shape[0] // parts
    out = []
    for i in range(parts):
        sl = slice(i * width, (i + 1) * width)
        weight = _matrix(pointwise)[sl]
        bias = None if pointwise.bias is None else pointwise.bias[sl]
        mixed = (rows @ weight.t() if bias is None else torch.addmm(bias, rows, weight.t())).view(b, hh, ww, width)
        _record(tape, mixed=mixed)
        kernel = depthwise.weight[sl].contiguous(memory_format=torch.channels_last)
        dw_bias = None if depthwise.bias is None else depthwise.bias[sl]
        conv = F.conv2d(_nchw(mixed), kernel, dw_bias, padding=depthwise.padding, groups=width)
        out.append(_nhwc(conv))
    return out


def _norm(h: torch.Tensor, norm: Any) -> torch.Tensor:
    """The channel LayerNorm (with its weight and bias) of an NHWC map: one ``F.layer_norm`` over the last dim."""
    return F.layer_norm(h, (h.shape[-1],), norm.body.weight, norm.body.bias, norm.eps)


def _head_mask(channels: int, heads: int, device: torch.device) -> torch.Tensor:
    """``(C, C)`` bool, True outside the per-head diagonal blocks."""
    head = torch.arange(channels, device=device) // (channels // heads)
    return head[:, None] != head[None, :]


def _attention_matrix(
    gram: torch.Tensor, q_sq: torch.Tensor, k_sq: torch.Tensor, temperature: torch.Tensor, heads: int
) -> torch.Tensor:
    """Block-diagonal ``(B, C, C)`` attention ``softmax(q̂ᵀk̂ · t)`` per head from ``qᵀk`` and the squared norms.

    ``q̂ = q / max(‖q‖, 1e-12)`` along the pixels, as :func:`torch.nn.functional.normalize`.
    """
    channels = gram.shape[-1]
    q_norm = q_sq.sqrt().clamp_min(_EPS_NORMALIZE)
    k_norm = k_sq.sqrt().clamp_min(_EPS_NORMALIZE)
    scale = temperature.reshape(heads, 1).expand(heads, channels // heads).reshape(channels)
    logits = gram / (q_norm[:, :, None] * k_norm[:, None, :]) * scale[None, :, None]
    logits = logits.masked_fill(_head_mask(channels, heads, gram.device), float("-inf"))
    return logits.softmax(dim=-1)


def _qk_gram(qk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``qᵀk``, ``‖q‖²`` and ``‖k‖²`` from the ``(B, N, 2C)`` view ``[q k]``, with one batched product."""
    return _gram_parts(symmetric_gram(qk))


def _gram_parts(full: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``qᵀk``, ``‖q‖²`` and ``‖k‖²`` read off the ``(B, 2C, 2C)`` Gram matrix of ``[q k]`` (or its tangent)."""
    c = full.shape[-1] // 2
    diag = full.diagonal(dim1=1, dim2=2)
    return full[:, :c, c:], diag[:, :c], diag[:, c:]


def _squared_norms(a: torch.Tensor) -> torch.Tensor:
    """``(B, C)`` squared norms over the pixels of the ``(B, N, C)`` map ``a``: sums of squares, no matrix product."""
    return a.square().sum(dim=1)


def _attend_project(
    residual: torch.Tensor, v: torch.Tensor, attn: torch.Tensor, conv: Any, inplace: bool
) -> torch.Tensor:
    """``residual + conv1x1(A v)`` per pixel, as one ``baddbmm`` with the folded ``(W A)ᵀ``; all NHWC."""
    b, hh, ww, c = residual.shape
    folded_t = (_matrix(conv)[None] @ attn).transpose(1, 2)  # (B, C_v, C_out)
    res = residual.view(b, hh * ww, c)
    vv = v.reshape(b, hh * ww, v.shape[-1])
    out = res.baddbmm_(vv, folded_t) if inplace else torch.baddbmm(res, vv, folded_t)
    if conv.bias is not None:
        out = out.add_(conv.bias) if inplace else out + conv.bias
    return out.view(b, hh, ww, c)


def _split_qkv(qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, H, W, 3C)`` -> the ``(B, N, 2C)`` view ``[q k]`` and the ``(B, N, C)`` view ``v``."""
    b, hh, ww, c3 = qkv.shape
    flat = qkv.view(b, hh * ww, c3)
    c = c3 // 3
    qk, v = flat.split([2 * c, c], dim=-1)  # split, not slices: its backward is one concatenation, not zero-fills
    return qk, v


def transformer_block(
    block: TransformerBlock, h: torch.Tensor, inplace: bool, rows: int | None = None, tape: Tape | None = None
) -> torch.Tensor:
    """:class:`TransformerBlock` on an NHWC map: ``h + MDTA(LN(h))``, then ``+ GDFN(LN(h))``.

    ``rows``: compute by strips of that many rows (inference only, implies ``inplace``). ``tape`` (out of place
    only): record the intermediates the tangent pass needs.
    """
    if rows is not None:
        return _gdfn_strips(block, _mdta_strips(block, h, rows), rows)
    attn_mod, ffn = block.attn, block.ffn
    normed = _norm(h, block.norm1)
    mixed = _pointwise(normed, attn_mod.qkv)
    qkv = _conv3x3(mixed, attn_mod.qkv_dwconv)
    qk, v = _split_qkv(qkv)
    gram, q_sq, k_sq = _qk_gram(qk)
    attn = _attention_matrix(gram, q_sq, k_sq, attn_mod.temperature, attn_mod.num_heads)
    _record(tape, h=h, normed=normed, mixed=mixed, qk=qk, v=v, gram=gram, q_sq=q_sq, k_sq=k_sq, attn=attn)
    h = _attend_project(h, v, attn, attn_mod.project_out, inplace)
    del qkv, qk, v
    normed = _norm(h, block.norm2)
    gate, value = _pointwise_depthwise_parts(normed, ffn.project_in, ffn.dwconv, 2, tape)
    act = F.gelu(gate)
    gated = act.mul_(value) if inplace else act * value
    _record(tape, h=h, normed=normed, gate=gate, value=value, act=act, gated=gated)
    del gate, value
    return _residual_pointwise(h, gated, ffn.project_out, inplace)


def _residual_pointwise(h: torch.Tensor, z: torch.Tensor, conv: Any, inplace: bool) -> torch.Tensor:
    """``h + conv1x1(z)`` on NHWC maps, the add fused into the matrix product."""
    b, hh, ww, c = h.shape
    rows = h.view(b * hh * ww, c)
    z_rows = z.reshape(b * hh * ww, z.shape[-1])
    weight_t = _matrix(conv).t()
    out = rows.addmm_(z_rows, weight_t) if inplace else torch.addmm(rows, z_rows, weight_t)
    if conv.bias is not None:
        out = out.add_(conv.bias) if inplace else out + conv.bias
    return out.view(b, hh, ww, c)


def adaptive_fusion(
    fm: AdaptiveFusion,
    branches: list[torch.Tensor],
    inplace: bool,
    rows: int | None = None,
    tape: Tape | None = None,
) -> torch.Tensor:
    """:class:`AdaptiveFusion` on NHWC branches; returns the ``(B, H, W, K·dim)`` fused features.

    ``rows``: the gated part by strips of that many rows (inference only). ``tape``: as :func:`transformer_block`.
    """
    heads = fm.num_heads
    n = len(branches)
    pre = [_pointwise(x, fm._sub("qkv", i)) for i, x in enumerate(branches)]
    qkvs = [_conv3x3(m, getattr(fm, f"qkv{i + 1}_dwconv")) for i, m in enumerate(pre)]
    splits = [_split_qkv(t) for t in qkvs]
    # a branch's own qᵀk is never used, so its squared norms are sums of squares, not a Gram's diagonal
    squares = [_squared_norms(qk).chunk(2, dim=-1) for qk, _ in splits]  # (‖q‖², ‖k‖²) of each branch
    qks = [qk.chunk(2, dim=-1) for qk, _ in splits]  # (q, k) of each branch
    mixed = []
    for i, x in enumerate(branches):
        others = [j for j in range(n) if j != i]
        k = qks[i][1]
        if len(others) == 1:
            query, query_sq = qks[others[0]][0], squares[others[0]][0]
        else:  # the re-normalised mean of the other branches' normalised queries
            query = torch.stack(
                [qks[j][0] / squares[j][0].sqrt().clamp_min(_EPS_NORMALIZE)[:, None, :] for j in others]
            ).mean(0)
            query_sq = _squared_norms(query)
        qk_gram = cross_gram(query, k)
        k_sq = squares[i][1]
        attn = _attention_matrix(qk_gram, query_sq, k_sq, getattr(fm, f"temperature{i + 1}"), heads)
        qk, v = splits[i]
        _record(tape, x=x, pre=pre[i], qk=qk, v=v, query_sq=query_sq, k_sq=k_sq, gram=qk_gram, attn=attn)
        mixed.append(_attend_project(x, v, attn, fm._sub("project_mid", i), inplace))
    del qkvs, splits, qks, pre
    out = torch.cat(mixed, dim=-1)
    if rows is not None:
        return _gates_strips(fm, out, mixed, rows)
    gates = _pointwise_depthwise_parts(out, fm.project_E, fm.project_E_d, n, tape)
    _record(tape, out=out, gates=gates)
    for i, x in enumerate(mixed):
        pre_e = _pointwise(x, fm._sub("project_E", i))
        expanded = _conv3x3(pre_e, getattr(fm, f"project_E{i + 1}_d"))
        act = F.gelu(gates[i])
        z = act.mul_(expanded) if inplace else act * expanded
        _record(tape, x=x, pre=pre_e, expanded=expanded, act=act, z=z)
        del expanded
        out = _residual_pointwise(out, z, fm._sub("project_out", i), inplace)
    return out


# ------------------------------------------------------------------------------------------ row strips (inference)
# The feed-forward parts (LayerNorm, 1x1, depth-wise 3x3, gate, 1x1) only look one row up and down, so inference
# runs them on strips of rows (plus a one-row halo on each side, recomputed) whose 64-128-channel temporaries stay in
# the cache instead of making 80-160 MB round trips through memory. The attention's Gram matrix is a sum over pixels,
# so it is accumulated strip by strip; only v (C channels) is kept for the whole image.


def _strip_ranges(height: int, rows: int) -> list[tuple[int, int, int, int]]:
    """``(r0, r1, lo, hi)``: output rows ``[r0, r1)`` computed from input rows ``[lo, hi)`` (one-row halo)."""
    return [(r0, min(r0 + rows, height), max(r0 - 1, 0), min(r0 + rows + 1, height)) for r0 in range(0, height, rows)]


def _add_rows(target: torch.Tensor, z: torch.Tensor, conv: Any) -> None:
    """``target += conv1x1(z)`` in place, for ``(B, r, W, C)`` row blocks (``target`` rows contiguous per item)."""
    weight_t = _matrix(conv).t()
    for i in range(target.shape[0]):
        target[i].view(-1, target.shape[-1]).addmm_(z[i].reshape(-1, z.shape[-1]), weight_t)
    if conv.bias is not None:
        target.add_(conv.bias)


def _mdta_strips(block: TransformerBlock, h: torch.Tensor, rows: int) -> torch.Tensor:
    """``h + MDTA(LN(h))`` in place, by strips (see above)."""
    attn_mod = block.attn
    b, height, width, c = h.shape
    v_all = torch.empty_like(h)
    gram = h.new_zeros(b, 2 * c, 2 * c)
    for r0, r1, lo, hi in _strip_ranges(height, rows):
        qkv = _conv3x3(_pointwise(_norm(h[:, lo:hi], block.norm1), attn_mod.qkv), attn_mod.qkv_dwconv)
        flat = qkv[:, r0 - lo : r1 - lo].reshape(b, -1, 3 * c)
        qk = flat[..., : 2 * c]
        gram.baddbmm_(qk.transpose(1, 2), qk)
        v_all[:, r0:r1] = flat[..., 2 * c :].reshape(b, r1 - r0, width, c)
    attn = _attention_matrix(*_gram_parts(gram), attn_mod.temperature, attn_mod.num_heads)
    return _attend_project(h, v_all, attn, attn_mod.project_out, inplace=True)


def _gdfn_strips(block: TransformerBlock, h: torch.Tensor, rows: int) -> torch.Tensor:
    """``h + GDFN(LN(h))`` into a new map, by strips."""
    ffn = block.ffn
    out = h.clone()
    for r0, r1, lo, hi in _strip_ranges(h.shape[1], rows):
        u = _conv3x3(_pointwise(_norm(h[:, lo:hi], block.norm2), ffn.project_in), ffn.dwconv)[:, r0 - lo : r1 - lo]
        hidden = u.shape[-1] // 2
        _add_rows(out[:, r0:r1], F.gelu(u[..., :hidden]).mul_(u[..., hidden:]), ffn.project_out)
    return out


def _gates_strips(fm: AdaptiveFusion, out: torch.Tensor, mixed: list[torch.Tensor], rows: int) -> torch.Tensor:
    """The gated part of :class:`AdaptiveFusion`: ``out + Σ_i project_out_i(gelu(gate_i) · E_i(mixed_i))``."""
    n = len(mixed)
    result = out.clone()
    for r0, r1, lo, hi in _strip_ranges(out.shape[1], rows):
        gates = _conv3x3(_pointwise(out[:, lo:hi], fm.project_E), fm.project_E_d)[:, r0 - lo : r1 - lo]
        width = gates.shape[-1] // n
        for i, x in enumerate(mixed):
            expanded = _conv3x3(_pointwise(x[:, lo:hi], fm._sub("project_E", i)), getattr(fm, f"project_E{i + 1}_d"))
            z = F.gelu(gates[..., i * width : (i + 1) * width]).mul_(expanded[:, r0 - lo : r1 - lo])
            _add_rows(result[:, r0:r1], z, fm._sub("project_out", i))
    return result


def encode_sources(
    net: nn.Module,
    x: torch.Tensor,
    embed: str,
    inplace: bool,
    rows: int | None = None,
    tape: Tape | None = None,
) -> list[torch.Tensor]:
    """Source ``k`` of ``(B, K, H, W)`` through ``net``'s 3x3 layer ``{embed}{k + 1}`` and Restormer blocks
    ``encoder{k + 1}`` (the first stage of ReFusion and of the LPN): the ``K`` NHWC branches. ``rows`` and ``tape`` as
    :func:`transformer_block`."""
    branches = []
    for k in range(x.shape[1]):
        source = _nhwc(x[:, k : k + 1])
        _record(tape, x=source)
        h = _conv3x3(source, getattr(net, f"{embed}{k + 1}"))
        for block in getattr(net, f"encoder{k + 1}"):
            h = transformer_block(block, h, inplace, rows, tape)
        branches.append(h)
    return branches


def fast_forward(
    net: FusionNet,
    x: torch.Tensor,
    inplace: bool = False,
    strip_rows: int | None = None,
    tape: Tape | None = None,
) -> torch.Tensor:
    """ReFusion's forward pass, channels-last with fused kernels; ``(B, K, H, W)`` -> ``(B, 1, H, W)``.

    Reads ``net``'s parameters at call time, so parameter substitution (the meta step's) applies. ``inplace=True``
    reuses buffers and is for inference only (no autograd); ``False`` is differentiable. ``strip_rows`` (inference,
    implies ``inplace``) computes the feed-forward parts by strips of that many rows. ``tape`` (out of place only)
    receives the intermediates :func:`~tdfusion_core.nets.refusion_tangent.linearize` replays.
    """
    check_sources(x, net.num_sources, "FusionNet")
    rows = strip_rows if strip_rows is not None and strip_rows < x.shape[-2] else None
    inplace = inplace or rows is not None
    if tape is not None and inplace:
        raise ValueError("a recording pass (tape) must be out of place")
    branches = encode_sources(net, x, "project_in_", inplace, rows, tape)
    out = adaptive_fusion(net.FM, branches, inplace, rows, tape)
    del branches
    for block in cast(list[TransformerBlock], net.decoder):
        out = transformer_block(block, out, inplace, rows, tape)
    pre_act = _conv3x3(out, net.project_out_0)
    act = F.leaky_relu(pre_act, net.act.negative_slope, inplace=inplace)
    fused = torch.sigmoid(_nchw(_conv3x3(act, net.project_out_1))).contiguous()
    _record(tape, features=out, pre_act=pre_act, act=act, fused=fused)
    return fused


# ------------------------------------------------------------------------------------------------ inference wrapper


class FastFusion(nn.Module):
    """Inference-only ReFusion with :func:`fast_forward`, in a chosen precision; returns float32 ``(B, 1, H, W)``.

    Args:
        net: the :class:`FusionNet` (its weights are read at call time in ``fp32``; ``bf16``/``fp16`` keep a cast
            copy made here, so later weight changes need a new wrapper).
        precision: ``"fp32"`` (exact up to rounding: within 1e-5 of the eager network on the published weights),
            ``"bf16"`` or ``"fp16"`` (weights and activations in that type; see :func:`precision_error`).
        strip_rows: compute the feed-forward parts by strips of that many rows (``None``: whole image).
        compile: wrap the pass in :func:`torch.compile` (first call compiles).
        measure_error: with ``bf16``/``fp16``, also run the ``fp32`` pass on the first call's input and keep
            ``max |output - fp32 output|`` in :attr:`error_vs_fp32` (``None`` until then, and for ``fp32``).
    """

    size_multiple: int = 1

    def __init__(
        self,
        net: FusionNet,
        precision: str = "fp32",
        strip_rows: int | None = None,
        compile: bool = False,
        measure_error: bool = False,
    ) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        self.net = net if self.dtype == torch.float32 else copy.deepcopy(net).to(self.dtype)
        self.net.eval()
        self.strip_rows = strip_rows
        self._pass: Any = torch.compile(fast_forward) if compile else fast_forward
        self._fp32_net = net if measure_error and self.dtype != torch.float32 else None
        self.error_vs_fp32: float | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = next(self.net.parameters()).device
        with torch.inference_mode():
            out: torch.Tensor = self._pass(self.net, x.to(device, self.dtype), True, self.strip_rows).float()
            if self._fp32_net is not None and self.error_vs_fp32 is None:
                ref = fast_forward(self._fp32_net, x.to(device, torch.float32), True, self.strip_rows)
                self.error_vs_fp32 = float((out - ref).abs().max())
        return out


def fast_inference(net: nn.Module, precision: str = "fp32", **options: Any) -> nn.Module:
    """The fastest exact inference module for ``net``: :class:`FastFusion` for ReFusion, else ``net`` itself.

    A network of another architecture runs eagerly, under autocast when ``precision`` is ``bf16``/``fp16``.
    """
    if isinstance(net, FusionNet):
        return FastFusion(net, precision, **options)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return net if precision == "fp32" else _Autocast(net, PRECISIONS[precision])


class _Autocast(nn.Module):
    def __init__(self, net: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.net, self.dtype = net, dtype
        self.size_multiple = int(getattr(net, "size_multiple", 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=self.dtype):
            out: torch.Tensor = self.net(x)
        return out.float()


def precision_error(fast: nn.Module, reference: nn.Module, x: torch.Tensor) -> float:
    """``max |fast(x) - reference(x)|`` with ``reference`` run in float32 (what ``tdfusion fuse`` reports)."""
    with torch.inference_mode():
        ref = reference.float()(x.float()) if not isinstance(reference, FastFusion) else reference(x)
        return float((fast(x).float() - ref.float()).abs().max())
