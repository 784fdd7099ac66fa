"""Evaluation runner: fusion metrics of fused-image folders against their sources, as tables (``tdfusion eval``).

What it does
------------
* **Pairing.** Files are paired by stem across the infrared folder, the visible folder and every fused folder (the
  suffix may differ). Only the names present in *all* of them are evaluated, so every method is scored on the same
  images; names left out are reported per folder (:attr:`DatasetResult.missing`). No common name is an error.
* **Reading.** Images are read with :func:`tdfusion_core.common.io.read_array` and must be single-channel or RGB (a 2- or
  4-channel file, e.g. with alpha, is refused naming the file). An RGB image — fused or source — is reduced to its
  luminance Y (BT.601, :func:`tdfusion_core.common.colour.rgb_to_ycbcr`), scaled to 0..255 and **rounded to integers**, as
  the reference evaluators do when they read with OpenCV's gray conversion (``np.round(cv2.cvtColor(..., GRAY))``);
  single-channel images are used as they are (scaled to 0..255). So colour fused images are scored on their
  luminance only, which is also what the fusion network produces.
* **Checks.** The fused image and both sources must have the same size (an error names the three files and sizes);
  an image containing NaN is refused naming the file.
* **Metrics.** :func:`tdfusion_core.metrics.fusion.compute_fusion_metrics` per image (the paper's Table 1 set by
  default), then the mean over the images of the dataset.
* **Tables.** Markdown, CSV and JSON, one row per method, one column per metric; per dataset and metric the best
  method is **bold** and the second best underlined (``<u>...</u>``, which GitHub and most Markdown renderers show).
  Ranking follows :data:`tdfusion_core.metrics.fusion.HIGHER_IS_BETTER` (higher is better for every built-in metric,
  including all six of Table 1: EN, SF, SCD, VIF, Qabf, SSIM); ties share a rank; NaN is never ranked. An optional
  per-image CSV lists every value.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from PIL import Image

from tdfusion_core.common.colour import rgb_to_ycbcr
from tdfusion_core.common.devices import pick_device
from tdfusion_core.common.io import ImageReadError, list_images, read_array
from tdfusion_core.metrics.fusion import HIGHER_IS_BETTER, METRICS, TABLE1, compute_fusion_metrics

__all__ = [
    "DatasetResult",
    "EvaluationInputError",
    "evaluate_folders",
    "rank_methods",
    "read_luminance",
    "to_csv",
    "to_json",
    "to_markdown",
    "to_per_image_csv",
    "write_reports",
]

#: PIL modes accepted as single-channel or RGB images (palette images are colour images stored compactly).
_SINGLE_CHANNEL_MODES = {"1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_RGB_MODES = {"RGB", "P", "YCbCr"}
_EIGHT_BIT_MODES = {"1", "L", *_RGB_MODES}


class EvaluationInputError(ValueError):
    """Folders or images that cannot be evaluated: no common names, size mismatch, wrong channels, NaN."""


def read_luminance(path: str | Path) -> torch.Tensor:
    """Read ``path`` as float64 ``(H, W)`` luminance on the 0..255 scale (see the module docstring).

    Raises:
        EvaluationInputError: the image is neither single-channel nor RGB, or contains NaN.
        tdfusion_core.common.io.ImageReadError: the file is missing or unreadable.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            mode, bands = im.mode, len(im.getbands())
    except FileNotFoundError as exc:
        raise ImageReadError(f"image not found: {path}") from exc
    except OSError as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from exc
    if mode not in _SINGLE_CHANNEL_MODES and mode not in _RGB_MODES:
        raise EvaluationInputError(
            f"{path}: images must be single-channel or RGB, this one has {bands} channel(s) (PIL mode {mode!r})"
        )
    arr = read_array(path)
    if np.isnan(arr).any():
        raise EvaluationInputError(f"{path}: the image contains NaN values")
    t = torch.from_numpy(arr).to(torch.float64)
    if t.ndim == 3:
        # RGB is always 8-bit here (read_array converts colour images to 8-bit RGB): back to exact levels 0..255,
        # whose Y = 0.299 R + 0.587 G + 0.114 B is then rounded to the nearest level.
        y, _ = rgb_to_ycbcr(torch.round(t * 255.0).permute(2, 0, 1))
        return torch.round(y[0]).clamp(0, 255)
    if mode in _EIGHT_BIT_MODES:  # undo the float32 rounding of value / 255: 8-bit levels are exact integers
        return torch.round(t * 255.0)
    return t * 255.0


@attrs.define
class DatasetResult:
    """Metrics of several methods on one dataset (one pair of source folders).

    Attributes:
        name: dataset name shown in the tables.
        metrics: metric names, in table order.
        images: the image names (stems) evaluated, common to every folder.
        means: method -> metric -> mean over :attr:`images`.
        per_image: method -> image -> metric -> value.
        missing: folder label ("ir", "vis" or a method) -> names present in some other folder but not in this one.
    """

    name: str
    metrics: list[str]
    images: list[str]
    means: dict[str, dict[str, float]] = attrs.field(factory=dict)
    per_image: dict[str, dict[str, dict[str, float]]] = attrs.field(factory=dict)
    missing: dict[str, list[str]] = attrs.field(factory=dict)

    @property
    def methods(self) -> list[str]:
        return list(self.means)


def _pair_names(folders: Mapping[str, Mapping[str, Path]], labels: Mapping[str, Path]) -> tuple[list[str], dict]:
    all_names = set().union(*(set(f) for f in folders.values()))
    common = set.intersection(*(set(f) for f in folders.values()))
    if not common:
        listing = "; ".join(f"{label}: {labels[label]} ({len(folders[label])} images)" for label in folders)
        raise EvaluationInputError(f"no image name is common to all folders ({listing})")
    missing = {label: sorted(all_names - set(f)) for label, f in folders.items() if all_names - set(f)}
    return sorted(common), missing


def evaluate_folders(
    ir_dir: str | Path,
    vis_dir: str | Path,
    fused: Mapping[str, str | Path],
    metrics: Sequence[str] = TABLE1,
    device: str | torch.device = "cpu",
    dataset: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> DatasetResult:
    """Evaluate each fused folder in ``fused`` (method name -> folder) against the source folders.

    Args:
        ir_dir, vis_dir: folders of infrared and visible source images.
        fused: method name -> folder of fused images (paired with the sources by file stem).
        metrics: names from :data:`tdfusion_core.metrics.fusion.METRICS`.
        device: where the metrics are computed.
        dataset: name shown in the tables (default: the name of the folder above ``ir_dir``).
        progress: called with a short message per image (e.g. ``click.echo``).

    Raises:
        EvaluationInputError: no common names, size mismatch, wrong channels or NaN (the message names the files).
        KeyError: an unknown metric name.
        FileNotFoundError: a folder does not exist.
    """
    metrics = list(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise KeyError(f"unknown fusion metric(s) {unknown}; known: {', '.join(METRICS)}")
    if not fused:
        raise EvaluationInputError("no fused folder given")
    ir_dir, vis_dir = Path(ir_dir), Path(vis_dir)
    labels: dict[str, Path] = {"ir": ir_dir, "vis": vis_dir}
    folders: dict[str, dict[str, Path]] = {"ir": list_images(ir_dir), "vis": list_images(vis_dir)}
    for method, folder in fused.items():
        if method in folders:
            raise EvaluationInputError(f"method name {method!r} is reserved for a source folder; choose another")
        labels[method] = Path(folder)
        folders[method] = list_images(folder)
    names, missing = _pair_names(folders, labels)
    result = DatasetResult(
        name=dataset or ir_dir.resolve().parent.name or "dataset", metrics=metrics, images=names, missing=missing
    )
    dev = pick_device(device)
    for method in fused:
        result.per_image[method] = {}
    for i, name in enumerate(names):
        ir_path, vis_path = folders["ir"][name], folders["vis"][name]
        ir, vis = read_luminance(ir_path).to(dev), read_luminance(vis_path).to(dev)
        if ir.shape != vis.shape:
            raise EvaluationInputError(
                f"source images differ in size: {ir_path} is {_hw(ir)}, {vis_path} is {_hw(vis)}"
            )
        for method in fused:
            f_path = folders[method][name]
            f = read_luminance(f_path).to(dev)
            if f.shape != ir.shape:
                raise EvaluationInputError(
                    f"fused image {f_path} is {_hw(f)} but its sources {ir_path} and {vis_path} are {_hw(ir)}"
                )
            values = compute_fusion_metrics(f, [ir, vis], names=metrics)
            result.per_image[method][name] = {m: float(v) for m, v in values.items()}
        if progress is not None:
            progress(f"[{i + 1}/{len(names)}] {name}")
    for method, rows in result.per_image.items():
        result.means[method] = {m: float(np.mean([rows[n][m] for n in names])) for m in metrics}
    return result


def _hw(t: torch.Tensor) -> str:
    return f"{t.shape[-2]}x{t.shape[-1]} (HxW)"


# ------------------------------------------------------------------------------------------------------------ ranking


def rank_methods(means: Mapping[str, Mapping[str, float]], metric: str) -> tuple[list[str], list[str]]:
    """Best and second-best methods for ``metric`` (lists, since ties share a rank); NaN values are not ranked."""
    sign = 1.0 if HIGHER_IS_BETTER.get(metric, True) else -1.0
    values = {m: sign * v[metric] for m, v in means.items() if not math.isnan(v[metric])}
    distinct = sorted(set(values.values()), reverse=True)
    best = [m for m, v in values.items() if distinct and v == distinct[0]]
    second = [m for m, v in values.items() if len(distinct) > 1 and v == distinct[1]]
    return best, second


# ------------------------------------------------------------------------------------------------------------ reports


def _fmt(value: float, digits: int) -> str:
    return "nan" if math.isnan(value) else f"{value:.{digits}f}"


def to_markdown(results: Sequence[DatasetResult], digits: int = 4) -> str:
    """Markdown tables, one per dataset; best **bold**, second best ``<u>underlined</u>``; arrows give direction."""
    parts: list[str] = []
    for r in results:
        arrows = [f"{m} {'↑' if HIGHER_IS_BETTER.get(m, True) else '↓'}" for m in r.metrics]
        lines = [
            f"### {r.name} ({len(r.images)} images)",
            "",
            "| Method | " + " | ".join(arrows) + " |",
            "|---|" + "---:|" * len(r.metrics),
        ]
        ranks = {m: rank_methods(r.means, m) for m in r.metrics}
        for method, values in r.means.items():
            cells = []
            for m in r.metrics:
                cell = _fmt(values[m], digits)
                best, second = ranks[m]
                if method in best:
                    cell = f"**{cell}**"
                elif method in second:
                    cell = f"<u>{cell}</u>"
                cells.append(cell)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    legend = (
        "Mean over the images of each dataset. **Bold**: best; <u>underlined</u>: second best (↑ higher is better)."
    )
    return "\n\n".join([*parts, legend]) + "\n"


def to_csv(results: Sequence[DatasetResult]) -> str:
    """CSV with columns ``dataset, method, images, <metric>...`` (full precision), one row per dataset and method."""
    rows = ((r, method, len(r.images), values) for r in results for method, values in r.means.items())
    return _csv(results, "images", rows)


def to_per_image_csv(results: Sequence[DatasetResult]) -> str:
    """CSV with columns ``dataset, method, image, <metric>...``, one row per image and method."""
    rows = (
        (r, method, image, values)
        for r in results
        for method, per in r.per_image.items()
        for image, values in per.items()
    )
    return _csv(results, "image", rows)


def _csv(
    results: Sequence[DatasetResult], third: str, rows: Iterable[tuple[DatasetResult, str, Any, Mapping[str, float]]]
) -> str:
    """CSV of ``dataset, method, <third>, <metric>...`` rows; each metric at full precision (``repr``), NaN if absent."""
    buf = io.StringIO()
    metrics = _all_metrics(results)
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["dataset", "method", third, *metrics])
    for r, method, key, values in rows:
        writer.writerow([r.name, method, key, *(repr(values.get(m, math.nan)) for m in metrics)])
    return buf.getvalue()


def to_json(results: Sequence[DatasetResult], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """JSON-ready dict: metrics, their direction, and per dataset the means, best/second per metric, image names.

    NaN is written as ``null``.
    """
    metrics = _all_metrics(results)

    def clean(v: float) -> float | None:
        return None if math.isnan(v) else v

    datasets = {}
    for r in results:
        ranks = {m: rank_methods(r.means, m) for m in r.metrics}
        datasets[r.name] = {
            "images": r.images,
            "methods": {method: {m: clean(v) for m, v in values.items()} for method, values in r.means.items()},
            "best": {m: ranks[m][0] for m in r.metrics},
            "second": {m: ranks[m][1] for m in r.metrics},
            "missing": r.missing,
        }
    out: dict[str, Any] = {
        "metrics": metrics,
        "higher_is_better": {m: HIGHER_IS_BETTER.get(m, True) for m in metrics},
        "datasets": datasets,
    }
    if extra:
        out.update(extra)
    return out


def write_reports(
    results: Sequence[DatasetResult],
    out_dir: str | Path,
    per_image: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``metrics.md``, ``metrics.csv``, ``metrics.json`` (and ``per_image.csv``) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "markdown": out / "metrics.md",
        "csv": out / "metrics.csv",
        "json": out / "metrics.json",
    }
    files["markdown"].write_text(to_markdown(results), encoding="utf-8")
    files["csv"].write_text(to_csv(results), encoding="utf-8")
    files["json"].write_text(json.dumps(to_json(results, extra), indent=2) + "\n", encoding="utf-8")
    if per_image:
        files["per_image"] = out / "per_image.csv"
        files["per_image"].write_text(to_per_image_csv(results), encoding="utf-8")
    return files


def _all_metrics(results: Sequence[DatasetResult]) -> list[str]:
    seen: dict[str, None] = {}
    for r in results:
        seen.update(dict.fromkeys(r.metrics))
    return list(seen)
