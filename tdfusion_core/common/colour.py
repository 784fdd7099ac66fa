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
import numpy as np
import torch

#: the colour map of weight maps everywhere (``tdfusion fuse --save-weights``, the training grids, the figures)
WEIGHT_CMAP = "viridis"

#: matplotlib's viridis sampled at 33 evenly spaced points (a data table, so no run needs matplotlib)
_VIRIDIS = np.array(
    [
        [0.267004, 0.004874, 0.329415],
        [0.277018, 0.050344, 0.375715],
        [0.282327, 0.094955, 0.417331],
        [0.282884, 0.135920, 0.453427],
        [0.278826, 0.175490, 0.483397],
        [0.270595, 0.214069, 0.507052],
        [0.258965, 0.251537, 0.524736],
        [0.244972, 0.287675, 0.537260],
        [0.229739, 0.322361, 0.545706],
        [0.214298, 0.355619, 0.551184],
        [0.199430, 0.387607, 0.554642],
        [0.185556, 0.418570, 0.556753],
        [0.172719, 0.448791, 0.557885],
        [0.160665, 0.478540, 0.558115],
        [0.149039, 0.508051, 0.557250],
        [0.137770, 0.537492, 0.554906],
        [0.127568, 0.566949, 0.550556],
        [0.120565, 0.596422, 0.543611],
        [0.120638, 0.625828, 0.533488],
        [0.132268, 0.655014, 0.519661],
        [0.157851, 0.683765, 0.501686],
        [0.196571, 0.711827, 0.479221],
        [0.246070, 0.738910, 0.452024],
        [0.304148, 0.764704, 0.419943],
        [0.369214, 0.788888, 0.382914],
        [0.440137, 0.811138, 0.340967],
        [0.515992, 0.831158, 0.294279],
        [0.595839, 0.848717, 0.243329],
        [0.678489, 0.863742, 0.189503],
        [0.762373, 0.876424, 0.137064],
        [0.845561, 0.887322, 0.099702],
        [0.926106, 0.897330, 0.104071],
        [0.993248, 0.906157, 0.143936],
    ]
)


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (any shape) to viridis RGB in [0, 1] (that shape + ``(3,)``), linearly interpolated
    between the table's samples (within 0.01 of matplotlib's 256-colour map)."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    at = np.linspace(0.0, 1.0, len(_VIRIDIS))
    return np.stack([np.interp(v, at, _VIRIDIS[:, c]) for c in range(3)], axis=-1)


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
