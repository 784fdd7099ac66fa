"""Colour handling: fuse the luminance, rebuild colour from the sources' chroma.

Fusion works on the Y channel of YCbCr (ITU-R BT.601, full range, chroma offset 0.5 — OpenCV's ``COLOR_RGB2YCrCb``
maths, through kornia). The fused RGB image is ``YCbCr -> RGB`` of the fused Y and a chroma mixed from the sources
as the reference code does: each source's chroma is weighted by its saturation ``|C - 0.5|``, so a grayscale
source (C = 0.5) contributes nothing and a single colour source passes its chroma through unchanged. Where no
source has colour, the result is grayscale. Everything here is differentiable and works on any device.

The RGB values are clamped to ``[0, 1]`` with a straight-through gradient (:func:`clamp_straight_through`): the
values, and so every image written to disk, are truly clamped, but a task trained on RGB (``input_kind="rgb"``, an
extension: the released code feeds its task networks the one-channel luminance) still sends a gradient to F
through saturated pixels, where a plain clamp would send zero. The price: at saturated pixels the gradient is the
straight-through surrogate's, not that of the clamped image, so the RGB path's meta-gradient matches finite
differences only where nothing saturates (the luminance path is exact everywhere).
"""

from __future__ import annotations

from typing import Literal

import kornia.color
import torch


def rgb_to_ycbcr(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``(..., 3, H, W)`` RGB in [0, 1] into luminance ``(..., 1, H, W)`` and chroma ``(..., 2, H, W)``."""
    ycbcr = kornia.color.rgb_to_ycbcr(rgb)
    return ycbcr[..., :1, :, :], ycbcr[..., 1:, :, :]


def clamp_straight_through(x: torch.Tensor, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """``x`` clamped to ``[low, high]`` in value, with the identity's gradient (straight-through)."""
    return x + (x.clamp(low, high) - x).detach()


def ycbcr_to_rgb(y: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
    """Rebuild RGB in [0, 1] from luminance ``(..., 1, H, W)`` and chroma ``(..., 2, H, W)`` (straight-through
    clamp: the gradient reaches ``y`` at saturated pixels too).

    The exact inverse of :func:`rgb_to_ycbcr` (kornia's ``cb = 0.564 (B − Y)``, ``cr = 0.713 (R − Y)``), written
    out because kornia's own inverse clamps with a zero gradient outside ``[0, 1]``.
    """
    cb, cr = chroma[..., :1, :, :] - 0.5, chroma[..., 1:, :, :] - 0.5
    r = y + cr / 0.713
    b = y + cb / 0.564
    g = (y - 0.299 * r - 0.114 * b) / 0.587
    return clamp_straight_through(torch.cat([r, g, b], dim=-3))


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
