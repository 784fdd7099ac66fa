"""Built-in plugin registering the networks that ship with tdfusion-core: fusion net ``refusion``, loss generators
``lpn`` (the released LPN) and ``lpn-equivariant`` (source-order equivariant).

Factories take ``num_sources`` and the architecture's keyword configuration; the modules are imported only when a
factory is called, so listing plugins stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tdfusion_core import hookimpl

if TYPE_CHECKING:
    from torch import nn


def refusion(num_sources: int = 2, **config: Any) -> nn.Module:
    """The ReFusion fusion network (:class:`tdfusion_core.nets.refusion.FusionNet`)."""
    from tdfusion_core.nets.refusion import FusionNet

    return FusionNet(num_sources=num_sources, **config)


def lpn(num_sources: int = 2, **config: Any) -> nn.Module:
    """The LPN loss generator (:class:`tdfusion_core.nets.lpn.LossGenerator`)."""
    from tdfusion_core.nets.lpn import LossGenerator

    return LossGenerator(num_sources=num_sources, **config)


def lpn_equivariant(num_sources: int = 2, **config: Any) -> nn.Module:
    """A source-order-equivariant loss generator (:class:`tdfusion_core.nets.lpn_equivariant.EquivariantLossGenerator`):
    shared per-source weights and a softmax across sources, so it cannot learn a position bias."""
    from tdfusion_core.nets.lpn_equivariant import EquivariantLossGenerator

    return EquivariantLossGenerator(num_sources=num_sources, **config)


@hookimpl
def tdfusion_register_fusion_nets() -> Mapping[str, Any]:
    return {"refusion": refusion}


@hookimpl
def tdfusion_register_loss_generators() -> Mapping[str, Any]:
    return {"lpn": lpn, "lpn-equivariant": lpn_equivariant}
