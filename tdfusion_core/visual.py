"""Dependency-free image grids for training logs: sources, fused image and G's weight maps, one row per sample.

(Publication-style figures with colour bars are in :mod:`tdfusion_core.figures`, which needs matplotlib.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

# (position, r, g, b) stops of a perceptually ordered blue -> green -> yellow map (viridis-like)
_STOPS = np.array(
    [
        [0.00, 0.267, 0.005, 0.329],
        [0.25, 0.229, 0.322, 0.546],
        [0.50, 0.128, 0.567, 0.551],
        [0.75, 0.369, 0.789, 0.383],
        [1.00, 0.993, 0.906, 0.144],
    ]
)


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] ``(H, W)`` to uint8 RGB ``(H, W, 3)``."""
    v = np.clip(values, 0.0, 1.0)
    rgb = np.stack([np.interp(v, _STOPS[:, 0], _STOPS[:, c]) for c in (1, 2, 3)], axis=-1)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def _gray(image: torch.Tensor) -> np.ndarray:
    arr = (image.detach().float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    return np.repeat(arr[..., None], 3, axis=-1)


def tile_grid(rows: list[list[np.ndarray]], gap: int = 2) -> np.ndarray:
    """Assemble rows of equally sized uint8 RGB tiles into one image with white gaps."""
    lines = []
    for tiles in rows:
        h = tiles[0].shape[0]
        spacer = np.full((h, gap, 3), 255, np.uint8)
        line = np.concatenate([x for t in tiles for x in (t, spacer)][:-1], axis=1)
        lines += [line, np.full((gap, line.shape[1], 3), 255, np.uint8)]
    return np.concatenate(lines[:-1], axis=0)


def weight_grid(sources: torch.Tensor, fused: torch.Tensor, weights: torch.Tensor, gap: int = 2) -> np.ndarray:
    """RGB grid ``(rows*H, cols*W, 3)``: for each sample the K sources, the fused image, then K weight maps."""
    rows = []
    for b in range(sources.shape[0]):
        tiles = [_gray(s) for s in sources[b]] + [_gray(fused[b, 0])]
        rows.append(tiles + [colormap(w.detach().float().cpu().numpy()) for w in weights[b]])
    return tile_grid(rows, gap)


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write a uint8 array as PNG (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def save_weight_grid(path: str | Path, sources: torch.Tensor, fused: torch.Tensor, weights: torch.Tensor) -> Path:
    """Write :func:`weight_grid` as a PNG."""
    return save_png(path, weight_grid(sources, fused, weights))


def save_gray_grid(path: str | Path, images: torch.Tensor) -> Path:
    """Write ``(B, C, H, W)`` images in [0, 1] as a PNG grid: one row per sample, one gray tile per channel."""
    return save_png(path, tile_grid([[_gray(c) for c in images[b]] for b in range(images.shape[0])]))
