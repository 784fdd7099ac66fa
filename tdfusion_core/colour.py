"""Colour handling: fuse the luminance, rebuild colour from the sources' chroma.

Fusion works on the Y channel of YCbCr (ITU-R BT.601, full range, chroma offset 0.5 — OpenCV's ``COLOR_RGB2YCrCb``
maths, through kornia). The fused RGB image is ``YCbCr -> RGB`` of the fused Y and a chroma mixed from the sources
as the reference code does: each source's chroma is weighted by its saturation ``|C - 0.5|``, so a grayscale
source (C = 0.5) contributes nothing and a single colour source passes its chroma through unchanged. Where no
source has colour, the result is grayscale. Everything here is differentiable and works on any device.
"""

from __future__ import annotations

from typing import Literal

import kornia.color
import torch


def rgb_to_ycbcr(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``(..., 3, H, W)`` RGB in [0, 1] into luminance ``(..., 1, H, W)`` and chroma ``(..., 2, H, W)``."""
    ycbcr = kornia.color.rgb_to_ycbcr(rgb)
    return ycbcr[..., :1, :, :], ycbcr[..., 1:, :, :]


def ycbcr_to_rgb(y: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
    """Rebuild RGB in [0, 1] from luminance ``(..., 1, H, W)`` and chroma ``(..., 2, H, W)``."""
    return kornia.color.ycbcr_to_rgb(torch.cat([y, chroma], dim=-3)).clamp(0.0, 1.0)


def mix_chroma(chroma: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Mix the chroma of K sources ``(B, K, 2, H, W)`` into ``(B, 2, H, W)`` with weights ``|C - 0.5|``.

    Where every source is neutral (all weights zero) the result is 0.5 (no colour).
    """
    weight = (chroma - 0.5).abs()
    total = weight.sum(dim=1)
    mixed = (chroma * weight).sum(dim=1) / total.clamp_min(eps)
    return torch.where(total > eps, mixed, torch.full_like(mixed, 0.5))


def has_colour(chroma: torch.Tensor, tol: float = 1.0 / 512) -> bool:
    """Whether any chroma value departs from neutral by more than ``tol``."""
    return bool(((chroma - 0.5).abs() > tol).any())


def fused_rgb(fused_y: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
    """RGB ``(B, 3, H, W)`` from the fused luminance ``(B, 1, H, W)`` and source chroma ``(B, K, 2, H, W)``."""
    return ycbcr_to_rgb(fused_y, mix_chroma(chroma))


def task_input(fused_y: torch.Tensor, chroma: torch.Tensor, kind: Literal["luminance", "rgb"] = "rgb") -> torch.Tensor:
    """The image a task network sees: fused luminance (1 channel) or RGB rebuilt with the mixed chroma."""
    if kind == "luminance":
        return fused_y
    if kind == "rgb":
        return fused_rgb(fused_y, chroma)
    raise ValueError(f"input kind must be 'luminance' or 'rgb', not {kind!r}")
