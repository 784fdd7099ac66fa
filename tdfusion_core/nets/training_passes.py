"""Which pass F and G train through: :func:`use_fast_pass` switches ReFusion and the LPN loss generator to the
channels-last passes of :mod:`~tdfusion_core.nets.refusion_fast` (and ReFusion's linearized pass,
:mod:`~tdfusion_core.nets.refusion_tangent`), by setting their ``forward_pass`` / ``linearized_pass`` hooks.

Why a module of its own: the switch needs both the passes and the tangent map, which is built on the passes.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import forward_ad

from tdfusion_core.nets import refusion_fast
from tdfusion_core.nets.blocks import TransformerBlock, check_sources
from tdfusion_core.nets.lpn import LossGenerator
from tdfusion_core.nets.refusion import FusionNet
from tdfusion_core.nets.refusion_fast import _conv3x3, _nchw, transformer_block
from tdfusion_core.nets.refusion_tangent import linearize


def lpn_forward(net: LossGenerator, x: torch.Tensor) -> torch.Tensor:
    """The LPN loss generator's forward pass (:class:`LossGenerator`) through the same channels-last blocks as
    :func:`~.refusion_fast.fast_forward`; ``(B, K, H, W)`` -> softmax weights ``(B, K, H, W)``. Out of place
    (differentiable), unless :func:`_may_run_in_place` (then in place, as ``fast_forward(..., inplace=True)``)."""
    check_sources(x, net.num_sources, "LossGenerator")
    inplace = _may_run_in_place(x)
    out = torch.cat(refusion_fast.encode_sources(net, x, "patch_embed", inplace), dim=-1)
    for block in cast(list[TransformerBlock], net.joint):
        out = transformer_block(block, out, inplace)
    out = F.prelu(_conv3x3(out, net.out1), net.out2.weight)
    out = _conv3x3(out, net.out3)
    return _nchw(out).softmax(dim=1).contiguous()


def use_fast_pass(net: nn.Module, enabled: bool = True) -> bool:
    """Make ``net(x)`` run its fast pass for training: :func:`~.refusion_fast.fast_forward` for ReFusion (a
    :class:`FusionNet`), :func:`lpn_forward` for the LPN loss generator (a :class:`LossGenerator`).

    The passes are out of place, so autograd and forward-mode AD work; a call that no derivative can be taken of
    (grad mode off, no forward-mode level) and that runs without autocast reuses its buffers as
    :func:`~.refusion_fast.fast_forward` ``inplace=True`` does.
    Two-source ReFusion also gets ``linearized_pass`` (:func:`~tdfusion_core.nets.refusion_tangent.linearize`),
    which the meta step uses for ``J_F v`` without a second forward.
    Only those two classes are switched (returns ``True``); any other network is left as it is (``False``). The state
    dict, parameters and results (up to floating-point rounding: float64 outputs, gradients and JVPs agree with the
    layers' forwards to 1e-12, ``tests/test_refusion_fast.py``) are unchanged; ``enabled=False`` undoes it.
    """
    if isinstance(net, FusionNet):
        net.forward_pass = _training_pass if enabled else None
        net.linearized_pass = linearize if enabled and net.num_sources == 2 else None
    elif isinstance(net, LossGenerator):
        net.forward_pass = lpn_forward if enabled else None
    else:
        return False
    return enabled


def _may_run_in_place(x: torch.Tensor) -> bool:
    """Whether a pass over ``x`` may reuse its buffers: no derivative of it can be asked for (grad mode off, outside
    any ``torch.func`` transform and ``torch.autograd.forward_ad`` level) and no autocast on ``x``'s device (in-place
    products do not autocast, so they would mix low-precision results into float32 buffers)."""
    return (
        not torch.is_grad_enabled()
        and torch._C._functorch.maybe_current_level() is None
        and forward_ad._current_level < 0
        and not torch.is_autocast_enabled(x.device.type)
    )


def _training_pass(net: FusionNet, x: torch.Tensor) -> torch.Tensor:
    return refusion_fast.fast_forward(net, x, inplace=_may_run_in_place(x))
