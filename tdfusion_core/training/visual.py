"""Dependency-free image grids for training logs: sources, fused image and G's weight maps, one row per sample.

The weight-map grid (``images/epoch_NNNN.png`` and the TensorBoard images of a run) has a title over every column
and a 0-1 colour bar on the right, so a map near ½ reads as "equal weights" rather than a flat colour. Weight maps
use :data:`tdfusion_core.common.colour.WEIGHT_CMAP` (viridis) everywhere: here, in ``tdfusion fuse --save-weights`` and in
:mod:`tdfusion_core.apps.figures` (publication-style figures, which need matplotlib).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from tdfusion_core.common.colour import colormap


def colour_tiles(values: np.ndarray) -> np.ndarray:
    """Weight maps in [0, 1] ``(H, W)`` as uint8 RGB ``(H, W, 3)`` in :data:`~tdfusion_core.common.colour.WEIGHT_CMAP`."""
    return (colormap(values) * 255.0 + 0.5).astype(np.uint8)


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


def source_names(k: int) -> list[str]:
    """Column names of K sources: ``infrared``, ``visible`` for two, else ``source 0`` …"""
    return ["infrared", "visible"] if k == 2 else [f"source {i}" for i in range(k)]


def _text(image: Image.Image, xy: tuple[int, int], text: str, width: int) -> None:
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    while text and draw.textlength(text, font=font) > width:
        text = text[:-1]
    draw.text(xy, text, fill=(0, 0, 0), font=font)


def colour_bar(height: int, width: int = 12, labels: bool = True) -> np.ndarray:
    """A vertical 0-1 colour bar ``(height, width + 26, 3)``: 1 at the top, 0 at the bottom, labelled 0, ½, 1."""
    values = np.linspace(1.0, 0.0, max(height, 2))[:, None].repeat(width, axis=1)
    bar = colour_tiles(values)
    if not labels:
        return bar
    canvas = Image.new("RGB", (width + 26, bar.shape[0]), (255, 255, 255))
    canvas.paste(Image.fromarray(bar), (0, 0))
    for value, text in ((1.0, "1"), (0.5, "0.5"), (0.0, "0")):
        y = round((1.0 - value) * (bar.shape[0] - 1))
        _text(canvas, (width + 3, min(max(y - 5, 0), bar.shape[0] - 11)), text, 24)
    return np.asarray(canvas)


def weight_grid(
    sources: torch.Tensor,
    fused: torch.Tensor,
    weights: torch.Tensor,
    gap: int = 2,
    titles: list[str] | None = None,
    colorbar: bool = True,
) -> np.ndarray:
    """RGB grid: for each sample the K sources, the fused image, then K weight maps (``WEIGHT_CMAP``, 0-1).

    A header row names the columns (``titles``, default: the source names, ``fused``, ``w <source>``) and a colour
    bar on the right gives the scale of the weight maps (``colorbar``)."""
    rows = []
    for b in range(sources.shape[0]):
        tiles = [_gray(s) for s in sources[b]] + [_gray(fused[b, 0])]
        rows.append(tiles + [colour_tiles(w.detach().float().cpu().numpy()) for w in weights[b]])
    body = tile_grid(rows, gap)
    names = source_names(sources.shape[1])
    titles = titles if titles is not None else [*names, "fused", *(f"w {n}" for n in names)]
    tile_w = rows[0][0].shape[1]
    header = Image.new("RGB", (body.shape[1], 14), (255, 255, 255))
    for col, title in enumerate(titles[: len(rows[0])]):
        _text(header, (col * (tile_w + gap) + 2, 1), title, tile_w - 2)
    grid = np.concatenate([np.asarray(header), body], axis=0)
    if colorbar:
        bar = colour_bar(body.shape[0])
        bar = np.concatenate([np.full((14, bar.shape[1], 3), 255, np.uint8), bar], axis=0)
        grid = np.concatenate([grid, np.full((grid.shape[0], 4, 3), 255, np.uint8), bar], axis=1)
    return grid


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
