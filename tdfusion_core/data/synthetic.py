"""Synthetic registered infrared / visible road scenes with segmentation masks and boxes: the built-in dataset.

The two sources are made to carry *different* task-relevant information, which is what a task-driven fusion loss
has to learn to combine:

* **warm objects** (people, vehicles) are bright in infrared at any hour; in visible light they have ordinary
  reflectance contrast by day and are nearly invisible at night (low illumination, amplified sensor noise);
* **painted road markings** and **cold objects** (cones, crates, sign boards at ambient temperature) exist only in
  the visible image: in infrared they have exactly the temperature of the background behind them;
* the visible background is textured (grass / earth / asphalt grain, sky gradient); the infrared background is
  smooth (temperature varies slowly), with the column fixed-pattern noise of thermal sensors.

Classes of the masks (``SEG_CLASSES``): 0 background, 1 person, 2 vehicle, 3 marking, 4 cold object.
Classes of the boxes (``BOX_CLASSES``, no background and no stuff): 0 person, 1 vehicle, 2 cold object.

Each scene is a pure function of ``(seed, split, index)`` (numpy ``default_rng``), so :class:`SyntheticScenes`
generates items on the fly, identically in every worker and run. A 96x128 scene takes a few milliseconds.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from tdfusion_core.common.colour import rgb_to_ycbcr
from tdfusion_core.data.sample import Sample

SEG_CLASSES = ("background", "person", "vehicle", "marking", "cold object")
BOX_CLASSES = ("person", "vehicle", "cold object")
#: mask class -> box class (objects only)
SEG_TO_BOX = {1: 0, 2: 1, 4: 2}
PERSON, VEHICLE, MARKING, COLD = 1, 2, 3, 4
#: codes of :attr:`Scene.only`
INFRARED_ONLY, VISIBLE_ONLY = 1, 2

# RGB paint colours of the scenes' objects (a data table; alike in shape only to other colour tables)
_PAINTS = np.array(
    [
        [0.75, 0.10, 0.10],
        [0.10, 0.20, 0.60],
        [0.85, 0.85, 0.82],
        [0.12, 0.12, 0.13],
        [0.50, 0.52, 0.55],
        [0.20, 0.45, 0.25],
        [0.80, 0.65, 0.20],
    ],
    dtype=np.float32,
)


@attrs.define
class Scene:
    """One generated scene (numpy, float32 in [0, 1]).

    Attributes:
        ir: ``(H, W)`` infrared intensity.
        visible: ``(H, W, 3)`` visible RGB.
        mask: ``(H, W)`` uint8 class of each pixel (``SEG_CLASSES``).
        boxes: ``(N, 5)`` float32 rows ``box class, x0, y0, x1, y1`` in pixels (``BOX_CLASSES``); each box is the
            extent of the object's visible (unoccluded) pixels.
        instances: ``(H, W)`` int32 object id of each pixel (0 = none; ids start at 1).
        instance_classes: mask class of each object id (index ``id - 1``).
        night: whether the scene is lit at night.
        ir_background: ``(H, W)`` infrared of the empty scene (no objects, no noise); tests measure contrasts on it.
        only: ``(H, W)`` uint8 ground truth of which source alone shows a pixel's class: ``INFRARED_ONLY`` (warm
            objects at night), ``VISIBLE_ONLY`` (markings and cold objects where the visible image shows them: by
            day, and at night too with ``retroreflective``), 0 elsewhere (both sources, or no object).
    """

    ir: np.ndarray
    visible: np.ndarray
    mask: np.ndarray
    boxes: np.ndarray
    instances: np.ndarray
    instance_classes: list[int]
    night: bool
    ir_background: np.ndarray
    only: np.ndarray | None = None


@lru_cache(maxsize=8)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    y = (np.arange(h, dtype=np.float32) + 0.5)[:, None]
    x = (np.arange(w, dtype=np.float32) + 0.5)[None, :]
    return y, x


def smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Zero-mean, unit-scale value noise ``(h, w)``: a random grid with one node every ``cell`` pixels, bilinear."""
    gh, gw = int(np.ceil(h / cell)) + 2, int(np.ceil(w / cell)) + 2
    g = rng.standard_normal((gh, gw)).astype(np.float32)
    r = (np.arange(h, dtype=np.float32) + 0.5) / cell
    c = (np.arange(w, dtype=np.float32) + 0.5) / cell
    r0, c0 = r.astype(np.int64), c.astype(np.int64)
    fr, fc = (r - r0)[:, None], (c - c0)[None, :]
    top = g[r0][:, c0] * (1 - fc) + g[r0][:, c0 + 1] * fc
    bottom = g[r0 + 1][:, c0] * (1 - fc) + g[r0 + 1][:, c0 + 1] * fc
    return top * (1 - fr) + bottom * fr


@attrs.define
class _Object:
    cls: int
    x: float  # horizontal centre
    bottom: float  # ground contact row
    height: float
    width: float


def _window(o: _Object, h: int, w: int) -> tuple[slice, slice] | None:
    y0, y1 = int(np.floor(o.bottom - o.height)), int(np.ceil(o.bottom))
    x0, x1 = int(np.floor(o.x - o.width / 2)), int(np.ceil(o.x + o.width / 2))
    y0, y1, x0, x1 = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
    if y1 <= y0 or x1 <= x0:
        return None
    return slice(y0, y1), slice(x0, x1)


def generate_scene(
    rng: np.random.Generator,
    size: tuple[int, int] = (96, 128),
    night: bool = False,
    noise: float = 0.02,
    max_people: int = 4,
    max_vehicles: int = 2,
    max_cold: int = 3,
    min_cold: int = 0,
    retroreflective: bool = False,
    cold_scale: float = 1.0,
) -> Scene:
    """Draw one scene from ``rng`` (see the module docstring for what it contains).

    ``retroreflective``: markings and cold objects (cones, signs) reflect the headlights at night, so the visible
    image shows them by night as by day (``SyntheticScenes(balanced=True)``); ``min_cold``: fewest cold objects;
    ``cold_scale``: size factor of cold objects.
    """
    H, W = int(size[0]), int(size[1])
    if H < 16 or W < 16:
        raise ValueError(f"synthetic scenes need at least 16x16 pixels, got {H}x{W}")
    y, x = _grid(H, W)
    horizon = float(rng.uniform(0.3, 0.42)) * H
    below = y > horizon  # (H, 1)
    depth = np.clip((y - horizon) / (H - horizon), 0.0, 1.0)  # 0 at the horizon, 1 at the bottom row

    # ---- visible reflectance: sky gradient, textured ground, asphalt road
    t_sky = np.clip(y / max(horizon, 1.0), 0, 1)[..., None]
    sky_top = np.array([0.40, 0.58, 0.85], np.float32) * rng.uniform(0.85, 1.1)
    sky_low = np.array([0.78, 0.83, 0.90], np.float32)
    sky = sky_top * (1 - t_sky) + sky_low * t_sky + 0.04 * smooth_noise(rng, H, W, 12)[..., None]
    ground_rgb = [np.array([0.30, 0.44, 0.20], np.float32), np.array([0.46, 0.40, 0.30], np.float32)][
        int(rng.integers(2))
    ]
    texture = 0.22 * smooth_noise(rng, H, W, 1.6) + 0.15 * smooth_noise(rng, H, W, 6)
    ground = ground_rgb * (1 + texture[..., None])
    vx, xb = W * rng.uniform(0.35, 0.65), W * rng.uniform(0.3, 0.7)
    half_bottom = W * rng.uniform(0.3, 0.45)
    xc = vx + (xb - vx) * depth  # road centre per row
    hw = half_bottom * depth  # road half width per row
    on_road = below & (np.abs(x - xc) < hw)
    asphalt = rng.uniform(0.2, 0.3) * (1 + 0.12 * smooth_noise(rng, H, W, 1.3))
    refl = np.where(below[..., None], np.where(on_road[..., None], asphalt[..., None], ground), sky)
    refl = np.ascontiguousarray(np.clip(refl, 0, 1), dtype=np.float32)

    # ---- infrared: temperature, smooth, no texture; the road keeps the day's heat
    t_ground = rng.uniform(0.26, 0.34) if night else rng.uniform(0.38, 0.48)
    t_road = t_ground + (rng.uniform(0.03, 0.07) if night else rng.uniform(0.04, 0.1))
    t_sky_ir = rng.uniform(0.04, 0.12)
    slow = 0.03 * smooth_noise(rng, H, W, 24)
    ir = np.where(below, np.where(on_road, t_road, t_ground) + slow, t_sky_ir + 0.08 * t_sky[..., 0])
    ir = np.ascontiguousarray(np.clip(ir, 0, 1), dtype=np.float32)
    ir_background = ir.copy()

    mask = np.zeros((H, W), np.uint8)
    instances = np.zeros((H, W), np.int32)

    # ---- painted markings: dashed centre line, solid edge lines, sometimes a zebra crossing (visible only)
    line_half = 0.4 + W * 0.008 * depth
    dash = np.mod(2.5 / (depth + 0.08) + rng.uniform(0, 1), 1.0) < 0.5
    marking = np.abs(x - xc) < line_half
    marking &= dash
    if rng.random() < 0.7:
        marking |= np.abs(np.abs(x - xc) - 0.9 * hw) < line_half
    if rng.random() < 0.35:
        yz = horizon + (H - horizon) * rng.uniform(0.45, 0.8)
        band = (y > yz) & (y < yz + (H - horizon) * 0.12)
        stripe = 1.5 + W * 0.02 * depth
        marking |= band & (np.abs(x - xc) < 0.8 * hw) & (np.mod((x - xc) / stripe, 2.0) < 1.0)
    marking &= on_road & (y > horizon + 2)
    paint = np.array([0.92, 0.92, 0.88] if rng.random() < 0.7 else [0.92, 0.78, 0.25], np.float32)
    refl[marking] = paint
    mask[marking] = MARKING

    # ---- objects, far to near
    objects: list[_Object] = []
    n_people = int(rng.integers(0, max_people + 1))
    n_vehicles = int(rng.integers(0, max_vehicles + 1))
    if n_people + n_vehicles == 0:
        n_people = 1
    warm = [PERSON] * n_people + [VEHICLE] * n_vehicles
    rng.shuffle(warm)
    for k, cls in enumerate(warm):
        d = rng.uniform(0.5, 1.0) if k == 0 else rng.uniform(0.15, 1.0)  # one object near: every scene has a box
        bottom = horizon + d * (H - horizon)
        if cls == PERSON:
            hgt = H * 0.5 * d * rng.uniform(0.85, 1.15)
            objects.append(_Object(cls, W * rng.uniform(0.05, 0.95), bottom, hgt, 0.36 * hgt))
        else:
            hgt = H * 0.3 * d * rng.uniform(0.85, 1.15)
            row = min(int(bottom), H - 1)
            centre = float(xc[row, 0]) + float(hw[row, 0]) * rng.uniform(-0.7, 0.7)
            objects.append(_Object(cls, centre, bottom, hgt, hgt * rng.uniform(1.9, 2.5)))
    for _ in range(int(rng.integers(min_cold, max(max_cold, min_cold) + 1))):
        d = rng.uniform(0.2, 1.0)
        hgt = H * 0.16 * cold_scale * d * rng.uniform(0.8, 1.3)
        objects.append(
            _Object(COLD, W * rng.uniform(0.05, 0.95), horizon + d * (H - horizon), hgt, hgt * rng.uniform(0.6, 1.4))
        )
    objects.sort(key=lambda o: o.bottom)

    instance_classes: list[int] = []
    for o in objects:
        win = _window(o, H, W)
        instance_classes.append(o.cls)
        if win is None:
            continue
        oid = len(instance_classes)
        yy, xx = y[win[0]], x[:, win[1]]
        u = (xx - o.x) / (o.width / 2)  # -1..1 across the object
        v = (yy - (o.bottom - o.height)) / o.height  # 0 top .. 1 bottom
        r_vis, r_ir, r_mask, r_inst = refl[win], ir[win], mask[win], instances[win]
        if o.cls == PERSON:
            head = (u / 0.42) ** 2 + ((v - 0.1) / 0.1) ** 2 < 1
            torso = (v > 0.19) & (v < 0.6) & (np.abs(u) < 0.8)
            legs = (v >= 0.6) & (v < 1.0) & ((np.abs(u - 0.32) < 0.26) | (np.abs(u + 0.32) < 0.26))
            shape = head | torso | legs
            temp = rng.uniform(0.78, 0.9)
            r_ir[head] = min(temp + 0.07, 1.0)
            r_ir[torso] = temp
            r_ir[legs & ~torso] = temp - 0.05
            r_vis[head] = np.array([0.80, 0.62, 0.50], np.float32) * rng.uniform(0.7, 1.1)
            r_vis[torso] = rng.uniform(0.05, 0.8, 3).astype(np.float32)
            r_vis[legs & ~torso] = rng.uniform(0.05, 0.5, 3).astype(np.float32)
        elif o.cls == VEHICLE:
            body = (v > 0.4) & (v < 0.88) & (np.abs(u) < 1.0)
            cabin = (v > 0.05) & (v <= 0.4) & (np.abs(u) < 0.62 - 0.6 * (0.4 - v))
            glass = cabin & (v > 0.1) & (np.abs(u) < 0.52 - 0.6 * (0.4 - v)) & (np.abs(u) > 0.04)
            wheel_r = (0.14 * o.height) ** 2
            wy = o.bottom - 0.14 * o.height
            wheels = ((xx - (o.x - 0.62 * o.width / 2)) ** 2 + (yy - wy) ** 2 < wheel_r) | (
                (xx - (o.x + 0.62 * o.width / 2)) ** 2 + (yy - wy) ** 2 < wheel_r
            )
            shape = body | cabin | wheels
            temp = rng.uniform(0.55, 0.7)
            front = 1.0 if rng.random() < 0.5 else -1.0  # engine side
            engine = body & (u * front > 0.45)
            r_ir[body | cabin] = temp
            r_ir[engine] = min(temp + 0.2, 1.0)
            r_ir[glass] = t_sky_ir + 0.15
            r_ir[wheels] = rng.uniform(0.75, 0.88)
            r_vis[body | cabin] = _PAINTS[int(rng.integers(len(_PAINTS)))] * rng.uniform(0.85, 1.1)
            r_vis[glass] = np.array([0.10, 0.12, 0.15], np.float32)
            r_vis[wheels] = np.array([0.05, 0.05, 0.05], np.float32)
        else:  # cold object: a cone or a crate / board at ambient temperature
            if rng.random() < 0.5:
                shape = (np.abs(u) < 0.2 + 0.8 * v) & (v > 0)
                colour = np.array([0.95, 0.45, 0.08], np.float32)
                r_vis[shape & (np.abs(v - 0.55) < 0.1)] = 0.95
                shape_colour = shape & ~(np.abs(v - 0.55) < 0.1)
                r_vis[shape_colour] = colour
            else:
                shape = (np.abs(u) < 1) & (v > 0)
                r_vis[shape] = rng.uniform(0.1, 0.95, 3).astype(np.float32)
            r_ir[shape] = ir_background[win][shape]  # same temperature as what it hides
        r_mask[shape] = o.cls
        r_inst[shape] = oid

    # ---- boxes of the visible part of each object
    boxes: list[list[float]] = []
    for oid, cls in enumerate(instance_classes, 1):
        o = objects[oid - 1]
        win = _window(o, H, W)
        if win is None:
            continue
        ys, xs = np.nonzero(instances[win] == oid)
        if ys.size < 4:
            continue
        y0, x0 = win[0].start, win[1].start
        boxes.append([SEG_TO_BOX[cls], x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1.0, y0 + ys.max() + 1.0])

    # ---- illumination and sensors
    illum = rng.uniform(0.07, 0.13) if night else rng.uniform(0.85, 1.1)
    vis = refl * illum
    visible_only = (mask == MARKING) | (mask == COLD)
    if night and retroreflective:  # headlights: retroreflective paint and cones shine at night
        vis[visible_only] = refl[visible_only] * rng.uniform(0.6, 0.85)
    only = np.zeros((H, W), np.uint8)
    if night:
        only[(mask == PERSON) | (mask == VEHICLE)] = INFRARED_ONLY
    if not night or retroreflective:
        only[visible_only] = VISIBLE_ONLY
    vis_sigma = noise * (2.0 if night else 1.0)
    vis = vis + rng.standard_normal(vis.shape).astype(np.float32) * vis_sigma
    ir_out = ir + rng.standard_normal(ir.shape).astype(np.float32) * noise
    ir_out += rng.standard_normal((1, W)).astype(np.float32) * (noise * 0.5)  # column fixed-pattern noise
    return Scene(
        ir=np.clip(ir_out, 0, 1).astype(np.float32),
        visible=np.clip(vis, 0, 1).astype(np.float32),
        mask=mask,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 5),
        instances=instances,
        instance_classes=instance_classes,
        night=night,
        ir_background=ir_background,
        only=only,
    )


def _split_code(split: str) -> int:
    return zlib.crc32(split.encode("utf-8"))


class SyntheticScenes(Dataset[Sample]):
    """``n`` synthetic IR/visible scenes generated on the fly, deterministic per ``(seed, split, index)``.

    Args:
        n: number of scenes.
        size: ``(H, W)`` of every scene.
        seed: seed of the whole set.
        night_fraction: probability that a scene is at night.
        target: ``"mask"`` (``SEG_CLASSES``), ``"boxes"`` (``BOX_CLASSES``), ``"both"`` (a dict
            ``{"mask", "boxes"}``; ``num_classes`` then counts the mask classes) or ``"none"``.
        split: name mixed into the seed, so that ``train`` and ``val`` differ for the same ``seed``.
        noise: sensor noise standard deviation (visible noise doubles at night).
        transform: ``Sample -> Sample`` applied to each item.
        max_people, max_vehicles, max_cold: most objects of each kind per scene.
        balanced: make fusion *necessary*: markings and cold objects are retroreflective
            (the visible image shows them at night too, while warm objects at night stay infrared-only), cold
            objects are twice as large and every scene has at least two, so each source alone misses classes the
            other shows.
    """

    def __init__(
        self,
        n: int = 256,
        size: Sequence[int] = (96, 128),
        seed: int = 0,
        night_fraction: float = 0.5,
        target: str = "mask",
        split: str = "train",
        noise: float = 0.02,
        transform: Callable[[Sample], Sample] | None = None,
        max_people: int = 4,
        max_vehicles: int = 2,
        max_cold: int = 3,
        balanced: bool = False,
    ) -> None:
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        if not 0.0 <= night_fraction <= 1.0:
            raise ValueError(f"night_fraction must be in [0, 1], got {night_fraction}")
        if target not in ("mask", "boxes", "both", "none"):
            raise ValueError(f"target must be 'mask', 'boxes', 'both' or 'none', got {target!r}")
        self.n = n
        self.size = (int(size[0]), int(size[1]))
        self.seed = seed
        self.night_fraction = night_fraction
        self.target = target
        self.split = split
        self.noise = noise
        self.transform = transform
        self.max_people, self.max_vehicles, self.max_cold = max_people, max_vehicles, max_cold
        self.balanced = balanced
        self.class_names: tuple[str, ...] | None = (
            BOX_CLASSES if target == "boxes" else SEG_CLASSES if target in ("mask", "both") else None
        )
        self.num_classes: int | None = len(self.class_names) if self.class_names else None
        self.target_kind: str = {"mask": "mask", "both": "mask", "boxes": "boxes", "none": "none"}[target]
        self.source_names = ("ir", "vi")
        #: no customary task size: the trainer falls back to the scene size
        self.task_size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return self.n

    def scene(self, index: int) -> Scene:
        """The raw scene of item ``index``."""
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} synthetic scenes")
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, self.seed >> 32, _split_code(self.split), index])
        night = bool(rng.random() < self.night_fraction)
        return generate_scene(
            rng,
            self.size,
            night,
            self.noise,
            self.max_people,
            self.max_vehicles,
            self.max_cold,
            min_cold=2 if self.balanced else 0,
            retroreflective=self.balanced,
            cold_scale=2.0 if self.balanced else 1.0,
        )

    def only(self, index: int) -> torch.Tensor:
        """``(H, W)`` uint8 map of item ``index``: which source alone shows each pixel (:attr:`Scene.only`)."""
        only = self.scene(index).only
        assert only is not None
        return torch.from_numpy(only)

    def best_source(self, index: int) -> torch.Tensor:
        """``(H, W)`` uint8 map of the source that shows each object best: 1 (infrared) on warm objects, day and
        night; 2 (visible) where only the visible image shows the class (markings, cold objects); 0 elsewhere.
        The oracle fusion of :mod:`tdfusion_core.apps.experiment` takes each pixel from that source."""
        scene = self.scene(index)
        assert scene.only is not None
        best = scene.only.copy()
        best[(scene.mask == PERSON) | (scene.mask == VEHICLE)] = INFRARED_ONLY
        return torch.from_numpy(best)

    def name(self, index: int, scene: Scene | None = None) -> str:
        """File stem of item ``index``: zero-padded index and ``D`` / ``N`` for day / night (as MSRS names)."""
        night = (scene or self.scene(index)).night
        return f"{index:05d}{'N' if night else 'D'}"

    def __getitem__(self, index: int) -> Sample:
        if index < 0:
            index += self.n
        scene = self.scene(index)
        sample = scene_to_sample(scene, self.name(index, scene), self.target)
        return self.transform(sample) if self.transform is not None else sample

    def __repr__(self) -> str:
        return (
            f"SyntheticScenes(n={self.n}, size={self.size}, seed={self.seed}, split={self.split!r}, "
            f"night_fraction={self.night_fraction}, target={self.target!r})"
        )


def scene_to_sample(scene: Scene, name: str = "", target: str = "mask") -> Sample:
    """A :class:`Sample` (infrared first) of a scene with the requested target."""
    H, W = scene.mask.shape
    y, chroma = rgb_to_ycbcr(torch.from_numpy(scene.visible).permute(2, 0, 1))
    sources = torch.stack([torch.from_numpy(scene.ir), y[0].clamp(0, 1)])
    chromas = torch.stack([torch.full((2, H, W), 0.5), chroma.clamp(0, 1)])
    mask = torch.from_numpy(scene.mask.astype(np.int64))
    boxes = torch.from_numpy(scene.boxes.copy())
    tgt: Any = {"mask": mask, "boxes": boxes, "both": {"mask": mask, "boxes": boxes}, "none": None}[target]
    return Sample(sources=sources, chroma=chromas, target=tgt, name=name)


def write_synthetic(
    out: str | Path,
    n: int,
    seed: int = 0,
    size: Sequence[int] = (96, 128),
    split: str = "train",
    night_fraction: float = 0.5,
    noise: float = 0.02,
) -> list[str]:
    """Write ``n`` scenes in the folder layout: ``<out>/<split>/{ir,vi}/<name>.png``, masks in ``label/``, YOLO
    boxes in ``labels/`` (normalised: x by the width, y by the height), and a ``classes.txt`` in each label folder.

    Returns the names written.
    """
    data = SyntheticScenes(n, size, seed, night_fraction, target="none", split=split, noise=noise)
    base = Path(out) / split
    dirs = {k: base / k for k in ("ir", "vi", "label", "labels")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    (dirs["label"] / "classes.txt").write_text("\n".join(SEG_CLASSES) + "\n", encoding="utf-8")
    (dirs["labels"] / "classes.txt").write_text("\n".join(BOX_CLASSES) + "\n", encoding="utf-8")
    H, W = data.size
    names: list[str] = []
    for i in range(n):
        scene = data.scene(i)
        name = data.name(i, scene)
        Image.fromarray(_to_uint8(scene.ir)).save(dirs["ir"] / f"{name}.png")
        Image.fromarray(_to_uint8(scene.visible)).save(dirs["vi"] / f"{name}.png")
        Image.fromarray(scene.mask).save(dirs["label"] / f"{name}.png")
        lines = []
        for cls, x0, y0, x1, y1 in scene.boxes.tolist():
            cx, cy, bw, bh = (x0 + x1) / 2 / W, (y0 + y1) / 2 / H, (x1 - x0) / W, (y1 - y0) / H
            lines.append(f"{int(cls)} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}")
        (dirs["labels"] / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        names.append(name)
    return names


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    return np.round(np.clip(arr, 0, 1) * 255.0).astype(np.uint8)
