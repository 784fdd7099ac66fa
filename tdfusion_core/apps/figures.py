"""Figures as PNG with matplotlib (the ``report`` extra): weight maps in the style of the paper's Fig. 5, metric bars.

* :func:`weight_map_figure`: one row of panels — each source, the fused image, then the loss generator's weight map
  of each source (values in [0, 1], shared colour scale, one colour bar) — like Fig. 5 of the TDFusion paper.
* :func:`metrics_bar_chart`: one small bar chart per metric (their scales differ too much to share an axis), one bar
  per method, the best bar per metric outlined.

Both draw on a plain :class:`matplotlib.figure.Figure` with the Agg canvas: no pyplot, no global backend change, no
window; the PNG is exactly ``size`` pixels (``width, height``). Without matplotlib they raise an ``ImportError`` that
says how to install it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tdfusion_core.common.colour import WEIGHT_CMAP

__all__ = ["metrics_bar_chart", "weight_map_figure"]

ImageLike = torch.Tensor | np.ndarray


def _matplotlib() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            "figures need matplotlib, which is not installed: pip install 'tdfusion-core[report]' "
            "(or pip install matplotlib)"
        ) from exc
    return Figure, FigureCanvasAgg


def _to_display(image: ImageLike, what: str) -> np.ndarray:
    """``(H, W)``, ``(1|3, H, W)``, ``(H, W, 1|3)`` or ``(1, 1|3, H, W)`` -> ``(H, W)`` or ``(H, W, 3)`` in [0, 1]."""
    arr = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, np.float32)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise ValueError(f"{what}: expected a gray (H, W) or RGB image, got shape {tuple(np.shape(image))}")
    if np.isnan(arr).any():
        raise ValueError(f"{what} contains NaN values")
    if arr.max() > 1.0 + 1e-6:  # 0..255 input
        arr = arr / 255.0
    return np.clip(arr, 0.0, 1.0)


def _save(fig: Any, canvas_cls: Any, path: str | Path, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas_cls(fig)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def weight_map_figure(
    sources: Sequence[ImageLike],
    fused: ImageLike,
    weights: ImageLike | Sequence[ImageLike],
    path: str | Path,
    source_names: Sequence[str] = ("Infrared", "Visible"),
    cmap: str = WEIGHT_CMAP,
    size: tuple[int, int] | None = None,
    dpi: int = 100,
    title: str | None = None,
) -> Path:
    """Write a Fig. 5-style PNG: sources, fused image, and one weight map per source with a colour bar.

    Args:
        sources: K source images (gray or RGB, values in [0, 1] or 0..255).
        fused: the fused image.
        weights: the K weight maps, as a ``(K, H, W)`` / ``(1, K, H, W)`` tensor or a sequence of ``(H, W)`` maps,
            values in [0, 1] (the loss generator's softmax output).
        path: PNG file to write (parent folders are created).
        source_names: panel titles of the sources (and of their weight maps, ``w_<name>``).
        cmap: matplotlib colour map of the weight maps.
        size: ``(width, height)`` of the PNG in pixels; default 300 px per panel wide, height from the image aspect
            ratio plus room for titles.
        dpi: resolution used to lay out text (the pixel size is ``size`` whatever the dpi).
        title: optional figure title.

    Returns:
        ``path``.
    """
    figure_cls, canvas_cls = _matplotlib()
    srcs = [_to_display(s, f"source {i}") for i, s in enumerate(sources)]
    if isinstance(weights, torch.Tensor | np.ndarray):
        w_arr = weights.detach().float().cpu().numpy() if isinstance(weights, torch.Tensor) else np.asarray(weights)
        if w_arr.ndim == 4 and w_arr.shape[0] == 1:
            w_arr = w_arr[0]
        maps = [np.asarray(w, np.float32) for w in w_arr]
    else:
        maps = [_to_display(w, f"weight map {i}") for i, w in enumerate(weights)]
    if len(maps) != len(srcs):
        raise ValueError(f"{len(srcs)} sources but {len(maps)} weight maps")
    fused_arr = _to_display(fused, "fused image")
    h, w = fused_arr.shape[:2]
    for i, (s, m) in enumerate(zip(srcs, maps)):
        if s.shape[:2] != (h, w) or m.shape != (h, w):
            raise ValueError(
                f"source {i} {s.shape[:2]} / weight map {i} {m.shape} do not match the fused image {(h, w)}"
            )
    names = list(source_names) + [f"source {i}" for i in range(len(source_names), len(srcs))]
    panels = [*zip(names, srcs), ("Fused", fused_arr)]
    n = len(panels) + len(maps)
    if size is None:
        size = (300 * n + 60, round(300 * h / w) + 60)
    fig = figure_cls(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (label, img) in zip(axes, panels):
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(label, fontsize=10)
    im = None
    for ax, label, m in zip(axes[len(panels) :], names, maps):
        im = ax.imshow(m, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"$w$ ({label})", fontsize=10)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.01, right=0.93, bottom=0.02, top=0.86 if title else 0.9, wspace=0.04)
    if im is not None:
        cax = fig.add_axes((0.945, 0.1, 0.012, 0.75))
        fig.colorbar(im, cax=cax)
    return _save(fig, canvas_cls, path, dpi)


def metrics_bar_chart(
    means: Mapping[str, Mapping[str, float]],
    path: str | Path,
    metrics: Sequence[str] | None = None,
    size: tuple[int, int] | None = None,
    dpi: int = 100,
    title: str | None = None,
) -> Path:
    """Write a PNG with one bar chart per metric, one bar per method (``means``: method -> metric -> value).

    The best method per metric (by :data:`tdfusion_core.metrics.fusion.HIGHER_IS_BETTER`) is drawn with a black
    outline. ``size`` is ``(width, height)`` in pixels; default 220 px per metric wide (at most 6 per row), 260 px per
    row high.
    """
    from tdfusion_core.apps.evaluate import rank_methods
    from tdfusion_core.metrics.fusion import HIGHER_IS_BETTER

    figure_cls, canvas_cls = _matplotlib()
    methods = list(means)
    if not methods:
        raise ValueError("no methods to plot")
    metrics = list(metrics) if metrics is not None else list(next(iter(means.values())))
    missing = [(m, k) for m in methods for k in metrics if k not in means[m]]
    if missing:
        raise ValueError(f"missing values (method, metric): {missing[:5]}")
    cols = min(len(metrics), 6)
    rows = math.ceil(len(metrics) / cols)
    if size is None:
        size = (220 * cols + 40, 260 * rows + 40)
    fig = figure_cls(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    palette = [f"C{i % 10}" for i in range(len(methods))]
    for ax, metric in zip(axes, metrics):
        values = [float(means[m][metric]) for m in methods]
        best, _ = rank_methods(means, metric)
        bars = ax.bar(range(len(methods)), values, color=palette)
        for bar, method in zip(bars, methods):
            if method in best:
                bar.set_edgecolor("black")
                bar.set_linewidth(2.0)
        arrow = "↑" if HIGHER_IS_BETTER.get(metric, True) else "↓"
        ax.set_title(f"{metric} {arrow}", fontsize=10)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=45, ha="right", fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.25 / rows, top=0.85 if title else 0.9, wspace=0.45)
    return _save(fig, canvas_cls, path, dpi)
