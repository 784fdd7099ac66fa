"""One-channel (luminance) OpenMMLab networks, as the released TDFusion task networks take the fused Y.

The first convolution (or patch embedding) gets one input channel. Where the backbone's constructor takes
``in_channels`` (MixVisionTransformer, ResNet and its variants, Swin, HRNet, ...) the config says so and the model is
built that way (:func:`set_config_in_channels`). Backbones that hard-code three channels (CSPNeXt of RTMDet,
CSPDarknet of YOLOX, ...) are built as configured and their first convolution is replaced by one with a third of the
input channels whose weights are the sum over the colour channels (:func:`convert_first_conv`): the same response
to a grey image as the RGB layer, and for a randomly initialised layer the same scale as a fan-in initialisation of
the smaller layer.
"""

from __future__ import annotations

import inspect
from collections.abc import MutableMapping
from typing import Any

import torch
import torch.nn as nn


def rgb_to_luminance_weight(weight: torch.Tensor) -> torch.Tensor:
    """``(O, 3k, kh, kw)`` -> ``(O, k, kh, kw)``: sum over the colour channel of each of the ``k`` channel groups.

    Input channel ``g * 3 + c`` is colour ``c`` of group ``g`` (one group for a plain stem, four for YOLOX's Focus,
    which stacks four pixel-shifted copies of the image).
    """
    out, channels = int(weight.shape[0]), int(weight.shape[1])
    if channels % 3:
        raise ValueError(f"a weight with {channels} input channels is not an RGB layer")
    return weight.reshape(out, channels // 3, 3, *weight.shape[2:]).sum(2)


def is_rgb_weight_for_luminance(source: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether ``source`` is an RGB convolution weight that :func:`rgb_to_luminance_weight` maps onto ``target``."""
    return (
        source.dim() == 4
        and target.dim() == 4
        and int(source.shape[1]) == 3 * int(target.shape[1])
        and source.shape[0] == target.shape[0]
        and source.shape[2:] == target.shape[2:]
    )


def accepts_in_channels(cls: type) -> bool:
    """Whether ``cls(...)`` takes ``in_channels``: its own ``__init__`` names it, or forwards ``**kwargs`` to a base
    class that does."""
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        if klass in (nn.Module, object):
            return False
        params = inspect.signature(init).parameters
        if "in_channels" in params:
            return True
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return False
    return False


def set_config_in_channels(backbone_cfg: MutableMapping[str, Any], backbone_cls: type) -> bool:
    """Set ``in_channels=1`` in the backbone config when ``backbone_cls`` accepts it; returns whether it did."""
    if not accepts_in_channels(backbone_cls):
        return False
    backbone_cfg["in_channels"] = 1
    return True


def first_conv(module: nn.Module) -> tuple[str, nn.Conv2d]:
    """Path and module of the first ungrouped ``Conv2d`` (in registration order) whose input channels are RGB."""
    for name, child in module.named_modules():
        if isinstance(child, nn.Conv2d) and child.groups == 1 and child.in_channels % 3 == 0:
            return name, child
    raise ValueError(f"{type(module).__name__} has no convolution with RGB input channels to make one-channel")


def convert_first_conv(module: nn.Module) -> str:
    """Replace the first RGB convolution of ``module`` by a ``k``-channel one (summed weights); returns its path."""
    path, conv = first_conv(module)
    new = nn.Conv2d(
        conv.in_channels // 3,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(rgb_to_luminance_weight(conv.weight))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    parent_path, _, attr = path.rpartition(".")
    parent = module.get_submodule(parent_path) if parent_path else module
    setattr(parent, attr, new)
    return path
