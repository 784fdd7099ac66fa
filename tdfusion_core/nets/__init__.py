"""Built-in networks: the ReFusion fusion network ``F`` and the LPN loss generator ``G``.

Both are plain :class:`torch.nn.Module` objects taking ``(B, K, H, W)`` sources in [0, 1] (K ≥ 2; infrared first,
then visible, for the published weights). They are registered as fusion-net architecture ``refusion`` and
loss-generator architecture ``lpn`` by :mod:`tdfusion_core.plugin.builtin_nets`; build them by name with
:func:`tdfusion_core.get_fusion_net` / :func:`tdfusion_core.get_loss_generator`.
"""

from tdfusion_core.nets.lpn import LossGenerator, build_lpn
from tdfusion_core.nets.refusion import AdaptiveFusion, FusionNet, build_refusion

__all__ = ["AdaptiveFusion", "FusionNet", "LossGenerator", "build_lpn", "build_refusion"]
