"""Fusing folders of infrared/visible image pairs with a trained fusion network (``tdfusion fuse``).

What :func:`fuse_images` does, following the reference's ``test.py``:

* pairs the files of the two folders by name (file stem; the suffix may differ) and lists the names found in only
  one folder;
* reads each pair as luminance + chroma (:func:`tdfusion_core.common.io.read_image`), stacks the luminances as
  ``(B, 2, H, W)`` (infrared first), pads them to the network's ``size_multiple`` (replicating the border) and crops
  the output back;
* by default stretches each fused image to [0, 1] (min-max, as the reference's ``test.py`` does before saving);
* writes ``Gray/<name>.png`` (the fused luminance) and, when either source has colour, ``RGB/<name>.png``: the fused
  luminance with the chroma of the sources mixed by saturation (:func:`tdfusion_core.common.colour.mix_chroma`; a gray
  source contributes nothing, so one colour source passes its chroma through). Gray in, gray out;
* optionally writes the loss generator's per-pixel source weights as colour-mapped PNGs
  (``Weights/<name>_ir.png``, ``Weights/<name>_vis.png``; viridis, :func:`tdfusion_core.common.colour.colormap`).

Bad input: a pair whose images differ in size raises :class:`ImageSizeMismatchError` naming both files before anything
is fused (``resize=True`` instead resamples the visible image onto the infrared grid); an unreadable or truncated
image is listed in :attr:`FuseSummary.failed` and the other pairs are still fused; a non-empty output folder is
refused unless ``overwrite=True``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from tdfusion_core.common.colour import colormap, fused_rgb, has_colour
from tdfusion_core.common.devices import pick_device
from tdfusion_core.common.io import (
    ImageReadError,
    array_to_luma_chroma,
    list_images,
    pil_to_array,
    read_image,
    to_uint8,
    write_image,
)
from tdfusion_core.common.precision import autocast, autocast_dtype
from tdfusion_core.training.batches import resize_images

SOURCE_NAMES = ("ir", "vis")


class FusionInputError(ValueError):
    """Input folders that cannot be fused: no pairs, images of different sizes, an unusable network."""


class ImageSizeMismatchError(FusionInputError):
    """An infrared and a visible image of one pair differ in size (``resize=True`` resamples instead)."""


@attrs.define
class FuseSummary:
    """What :func:`fuse_images` did.

    Attributes:
        out_dir: the output folder.
        fused: names (stems) of the pairs fused and written, in order.
        rgb: names of the pairs also written in colour (``RGB/``).
        unpaired_ir: infrared file names with no visible image of the same stem.
        unpaired_vis: visible file names with no infrared image of the same stem.
        failed: name -> reason, for pairs that could not be read or fused.
        seconds: wall time of the whole call.
        device: the device the network ran on.
    """

    out_dir: Path
    fused: list[str] = attrs.field(factory=list)
    rgb: list[str] = attrs.field(factory=list)
    unpaired_ir: list[str] = attrs.field(factory=list)
    unpaired_vis: list[str] = attrs.field(factory=list)
    failed: dict[str, str] = attrs.field(factory=dict)
    seconds: float = 0.0
    device: str = "cpu"
    precision: str = "fp32"
    precision_error: float | None = None

    @property
    def ok(self) -> bool:
        """True when no pair failed (unpaired names alone do not count as failures)."""
        return not self.failed

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        data = attrs.asdict(self)
        data["out_dir"] = str(self.out_dir)
        data["ok"] = self.ok
        return data

    def format(self) -> str:
        """Human-readable multi-line summary (what ``tdfusion fuse`` prints)."""
        per_pair = self.seconds / len(self.fused) if self.fused else 0.0
        lines = [
            f"fused {len(self.fused)} pair(s) into {self.out_dir} on {self.device} in {self.seconds:.1f} s "
            f"({per_pair:.2f} s/pair); {len(self.rgb)} in colour (RGB/), all in gray (Gray/)"
        ]
        if self.precision_error is not None:
            lines.append(
                f"{self.precision}: max |difference| to the float32 output {self.precision_error:.2g} (first pair)"
            )
        if self.unpaired_ir:
            lines.append(
                f"infrared images without a visible partner ({len(self.unpaired_ir)}): " + ", ".join(self.unpaired_ir)
            )
        if self.unpaired_vis:
            lines.append(
                f"visible images without an infrared partner ({len(self.unpaired_vis)}): "
                + ", ".join(self.unpaired_vis)
            )
        if self.failed:
            lines.append(f"failed ({len(self.failed)}):")
            lines.extend(f"  {name}: {reason}" for name, reason in self.failed.items())
        return "\n".join(lines)


@attrs.define
class _Pair:
    name: str
    y: torch.Tensor  # (2, H, W) luminances, infrared first
    chroma: torch.Tensor  # (2, 2, H, W) chroma per source


# ------------------------------------------------------------------------------------------------------- helpers


def _image_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from the file header, or ``None`` if it cannot be read (reported later, when fused)."""
    try:
        with Image.open(path) as im:
            return im.size
    except Exception:
        return None


def _check_sizes(ir: dict[str, Path], vis: dict[str, Path], names: list[str]) -> None:
    problems = []
    for name in names:
        a, b = _image_size(ir[name]), _image_size(vis[name])
        if a is not None and b is not None and a != b:
            problems.append(f"{ir[name]} is {a[0]}x{a[1]} but {vis[name]} is {b[0]}x{b[1]}")
    if problems:
        raise ImageSizeMismatchError(
            f"{len(problems)} pair(s) have infrared and visible images of different sizes (width x height); "
            "pass resize=True (--resize) to resample the visible image onto the infrared grid:\n  "
            + "\n  ".join(problems)
        )


def _join(
    name: str,
    ir: tuple[torch.Tensor, torch.Tensor],
    vis: tuple[torch.Tensor, torch.Tensor],
    resize: bool,
    what: tuple[Any, Any],
    hint: str = "",
) -> _Pair:
    """A pair on ``ir``'s grid from each source's ``(luminance, chroma)``: ``resize`` resamples ``vis`` onto it,
    else a size mismatch raises, naming the sources as ``what`` and ending with ``hint``."""
    (ir_y, ir_c), (vis_y, vis_c) = ir, vis
    size = (int(ir_y.shape[-2]), int(ir_y.shape[-1]))
    if tuple(vis_y.shape[-2:]) != size:
        if not resize:
            raise ImageSizeMismatchError(
                f"{what[0]} is {size[1]}x{size[0]} but {what[1]} is {vis_y.shape[-1]}x{vis_y.shape[-2]}{hint}"
            )
        vis_y = resize_images(vis_y, size, antialias=True).clamp(0, 1)
        vis_c = resize_images(vis_c, size, antialias=True).clamp(0, 1)
    return _Pair(name, torch.cat([ir_y, vis_y], 0), torch.stack([ir_c, vis_c], 0))


def _read_pair(name: str, ir_path: Path, vis_path: Path, resize: bool) -> _Pair:
    return _join(name, read_image(ir_path), read_image(vis_path), resize, (ir_path, vis_path))


def _pad(x: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


def _minmax(y: torch.Tensor) -> torch.Tensor:
    """Stretch each image of ``(B, C, H, W)`` to [0, 1] (left as is where it is constant)."""
    lo = y.amin(dim=(1, 2, 3), keepdim=True)
    hi = y.amax(dim=(1, 2, 3), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (y - lo) / span.clamp_min(1e-12), y.clamp(0, 1))


def _resolve_model(checkpoint: Any) -> tuple[nn.Module, nn.Module | None]:
    from tdfusion_core.training.checkpoints import ModelCheckpoint, load_model_checkpoint

    if isinstance(checkpoint, nn.Module):
        return checkpoint, None
    if not isinstance(checkpoint, ModelCheckpoint):
        checkpoint = load_model_checkpoint(checkpoint)
    if checkpoint.num_sources != len(SOURCE_NAMES):
        raise FusionInputError(
            f"the checkpoint's networks take {checkpoint.num_sources} sources; infrared/visible fusion needs 2"
        )
    return checkpoint.fusion_net, checkpoint.loss_generator


def _batches(
    names: list[str], ir: dict[str, Path], vis: dict[str, Path], batch_size: int, resize: bool, failed: dict[str, str]
) -> Iterator[tuple[list[_Pair], int]]:
    """Yield ``(batch, pairs consumed)``: pairs of one size, at most ``batch_size``; unreadable pairs go to ``failed``."""
    batch: list[_Pair] = []
    consumed = 0
    for name in names:
        consumed += 1
        try:
            pair = _read_pair(name, ir[name], vis[name], resize)
        except (ImageReadError, ImageSizeMismatchError) as exc:
            failed[name] = str(exc)
            continue
        if batch and batch[0].y.shape != pair.y.shape:
            yield batch, consumed - 1
            batch, consumed = [], 1
        batch.append(pair)
        if len(batch) >= batch_size:
            yield batch, consumed
            batch, consumed = [], 0
    if batch or consumed:
        yield batch, consumed


def _write_weights(folder: Path, name: str, weights: torch.Tensor) -> None:
    for k, source in enumerate(SOURCE_NAMES):
        rgb = colormap(weights[k].numpy())
        write_image(folder / f"{name}_{source}.png", torch.from_numpy(rgb).permute(2, 0, 1).float())


def _write_results(results: list[tuple[str, FusedImage]], gray_dir: Path, rgb_dir: Path, weight_dir: Path) -> None:
    """Write one batch's fused images (grey, colour when there is chroma, weight maps when asked)."""
    for name, result in results:
        write_image(gray_dir / f"{name}.png", result.gray)
        if result.rgb is not None:
            write_image(rgb_dir / f"{name}.png", result.rgb)
        if result.weights is not None:
            _write_weights(weight_dir, name, result.weights)


# ------------------------------------------------------------------------------------------- the network, tiled

#: default largest image (pixels) fused in one pass; larger ones are tiled (see :func:`run_tiled`)
DEFAULT_MAX_PIXELS = 1600 * 1600
#: default tile side and overlap (pixels) when an image is tiled
DEFAULT_TILE = 1024
DEFAULT_OVERLAP = 128


def network_forward(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The one call of a network (F or G) on a padded ``(B, 2, H, W)`` batch; a faster inference path can replace
    this function (everything else in this module goes through it)."""
    out: torch.Tensor = net(x)
    return out


def _run_padded(net: nn.Module, x: torch.Tensor, multiple: int) -> torch.Tensor:
    """``net`` on ``x`` padded to ``multiple`` (replicated border), output cropped back, as float32."""
    h, w = x.shape[-2:]
    padded = _pad(x, multiple)
    out = network_forward(net, padded)
    if out.ndim != 4 or out.shape[0] != x.shape[0] or tuple(out.shape[-2:]) != tuple(padded.shape[-2:]):
        raise FusionInputError(
            f"the network returned shape {tuple(out.shape)} for input {tuple(padded.shape)}; expected (B, C, H, W) "
            "of the input's size"
        )
    return out[..., :h, :w].float()


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    stride = max(tile - overlap, 1)
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


def _ramp(length: int, overlap: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """Blending weight along one axis of a tile, at edges shared with a neighbour: zero over the outer quarter of the
    overlap (where the tile's own border effects are), then rising linearly to one across the rest of it."""
    weight = torch.ones(length)
    if overlap > 0:
        margin = overlap // 4
        k = torch.arange(overlap, dtype=torch.float32)
        rise = ((k - margin + 1) / (overlap - margin + 1)).clamp(0, 1)
        n = min(overlap, length)
        if not at_start:
            weight[:n] = torch.minimum(weight[:n], rise[:n])
        if not at_end:
            weight[-n:] = torch.minimum(weight[-n:], rise[:n].flip(0))
    return weight


def run_tiled(
    net: nn.Module,
    x: torch.Tensor,
    multiple: int = 1,
    tile: int | None = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> torch.Tensor:
    """``net`` on ``(B, 2, H, W)`` sources, in overlapping tiles when the image is larger than ``max_pixels``.

    Each tile (``tile`` x ``tile``, rounded up to ``multiple``) runs on its own, so memory is bounded by the tile, not
    the image; tiles overlap by ``overlap`` pixels and are blended with weights that are zero over the outer quarter
    of the overlap (a tile's own border effects) and ramp linearly across the rest, so no seam shows. For a network
    whose receptive field reaches at most ``overlap // 4`` pixels the tiled result equals the untiled one. ``tile=None`` or an image of at most ``max_pixels`` pixels runs in one pass
    (``max_pixels=None``: whenever the image is larger than a tile). ReFusion's attention pools statistics over its
    whole input, so a tiled result differs slightly from an untiled one; ``docs/getting-started.md`` gives the
    difference measured per tile size.
    """
    h, w = (int(v) for v in x.shape[-2:])
    fits = tile is None or (h <= tile and w <= tile) or (max_pixels is not None and h * w <= max_pixels)
    if fits:
        return _run_padded(net, x, multiple)
    assert tile is not None
    tile = -(-max(tile, multiple) // multiple) * multiple
    overlap = max(0, min(overlap, tile // 2))
    ys, xs = _tile_starts(h, tile, overlap), _tile_starts(w, tile, overlap)
    out: torch.Tensor | None = None
    total = torch.zeros(1, 1, h, w, device=x.device)
    for i, top in enumerate(ys):
        for j, left in enumerate(xs):
            part = x[..., top : top + tile, left : left + tile]
            pred = _run_padded(net, part, multiple)
            th, tw = part.shape[-2:]
            wy = _ramp(th, overlap, i == 0, i == len(ys) - 1).to(x.device)
            wx = _ramp(tw, overlap, j == 0, j == len(xs) - 1).to(x.device)
            weight = (wy[:, None] * wx[None, :])[None, None]
            if out is None:
                out = torch.zeros(x.shape[0], pred.shape[1], h, w, device=x.device)
            out[..., top : top + th, left : left + tw] += pred * weight
            total[..., top : top + th, left : left + tw] += weight
    assert out is not None
    return out / total


# ------------------------------------------------------------------------------------------------------ public API


@attrs.define
class FusedImage:
    """One fused pair (what :class:`Fuser` returns and ``tdfusion fuse`` writes).

    Attributes:
        gray: the fused luminance ``(1, H, W)`` in [0, 1] (stretched unless ``normalize=False``).
        rgb: ``(3, H, W)`` in [0, 1] with the sources' chroma, or ``None`` when both sources are gray.
        weights: the loss generator's per-pixel source weights ``(2, H, W)``, when asked for.
    """

    gray: torch.Tensor
    rgb: torch.Tensor | None = None
    weights: torch.Tensor | None = None

    def image(self) -> Image.Image:
        """The 8-bit picture ``tdfusion fuse`` writes: ``RGB/`` when there is colour, else ``Gray/``."""
        return Image.fromarray(to_uint8(self.rgb if self.rgb is not None else self.gray))

    def save(self, path: str | Path) -> None:
        """Write :meth:`image` (format from the suffix) through a temporary file and a rename."""
        write_image(path, self.rgb if self.rgb is not None else self.gray)


class Fuser:
    """Fuse infrared/visible pairs in Python with a checkpoint, exactly as ``tdfusion fuse`` does.

    ``Fuser(checkpoint)(ir, vis)`` returns a :class:`FusedImage`; ``ir`` and ``vis`` may be paths, PIL images,
    numpy arrays (``(H, W)`` or ``(H, W, 3)``; uint8, uint16 or float in [0, 1]) or tensors (``(H, W)``,
    ``(1|3, H, W)``, float in [0, 1]). :func:`fuse_pair` is the one-call form.

    Args:
        checkpoint: a checkpoint path, a loaded :class:`~tdfusion_core.training.checkpoints.ModelCheckpoint`, or a fusion
            ``nn.Module`` (see :func:`fuse_images`).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"`` ...
        normalize: min-max stretch the fused luminance, as the reference and ``tdfusion fuse`` do.
        tile_size, tile_overlap, max_pixels: tiling of large images (see :func:`run_tiled`).
        precision, fast: the networks' compute type (:mod:`tdfusion_core.common.precision`) and ReFusion's fast exact pass
            (see :func:`fuse_images`); with ``bf16``/``fp16`` the first call's max difference to float32 is kept in
            ``fusion_net.error_vs_fp32``.
    """

    def __init__(
        self,
        checkpoint: Any,
        device: str | torch.device = "cpu",
        normalize: bool = True,
        tile_size: int | None = DEFAULT_TILE,
        tile_overlap: int = DEFAULT_OVERLAP,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        precision: str = "fp32",
        fast: bool = True,
    ) -> None:
        self.device = pick_device(device, "--device")
        self.precision, self.autocast_dtype = precision, autocast_dtype(precision)  # a wrong name fails first
        fusion_net, loss_generator = _resolve_model(checkpoint)
        self.fusion_net = fusion_net.to(self.device).eval()
        if fast or precision != "fp32":
            from tdfusion_core.common.speed import keep_freed_memory
            from tdfusion_core.nets.refusion_fast import fast_inference

            keep_freed_memory()
            self.fusion_net = fast_inference(self.fusion_net, precision, measure_error=True)
        self.loss_generator = loss_generator.to(self.device).eval() if loss_generator is not None else None
        self.multiple = max(int(getattr(self.fusion_net, "size_multiple", 1)), 1)
        self.normalize = normalize
        self.tile_size, self.tile_overlap, self.max_pixels = tile_size, tile_overlap, max_pixels

    def __call__(self, ir: Any, vis: Any, resize: bool = False, weights: bool = False) -> FusedImage:
        """Fuse one pair (``resize``: resample ``vis`` onto ``ir``'s grid when their sizes differ; ``weights``:
        also return the loss generator's weight maps)."""
        ir_pair, vis_pair = _as_luma_chroma(ir, "ir"), _as_luma_chroma(vis, "vis")
        pair = _join("pair", ir_pair, vis_pair, resize, ("ir", "vis"), "; pass resize=True")
        result, error = self.fuse_batch([pair], weights)[0]
        if result is None:
            raise FusionInputError(error or "fusion failed")
        return result

    fuse = __call__

    def fuse_batch(self, batch: list[_Pair], weights: bool = False) -> list[tuple[FusedImage | None, str | None]]:
        """Fuse pairs of one size together: per pair a :class:`FusedImage`, or ``None`` and why (a non-finite
        network output, never written)."""
        if weights and self.loss_generator is None:
            raise FusionInputError(
                "save_weights needs a checkpoint with a loss generator; this one holds only a fusion network"
            )
        x = torch.stack([p.y for p in batch]).to(self.device)
        tiling = (self.tile_size, self.tile_overlap, self.max_pixels)
        with torch.inference_mode():
            fused = run_tiled(self.fusion_net, x, self.multiple, *tiling)  # F computes in self.precision already
            maps = None
            if weights and self.loss_generator is not None:
                with autocast(self.device, self.autocast_dtype):
                    maps = run_tiled(self.loss_generator, x, self.multiple, *tiling).float()
        if fused.shape[1] != 1:
            raise FusionInputError(
                f"the fusion network returned {fused.shape[1]} channels for input {tuple(x.shape)}; expected (B, 1, H, W)"
            )
        results: list[tuple[FusedImage | None, str | None]] = []
        finite = torch.isfinite(fused).flatten(1).all(dim=1).tolist()
        if self.normalize:
            fused = _minmax(fused)
        fused = fused.clamp(0, 1).cpu()
        for i, pair in enumerate(batch):
            if not finite[i]:
                results.append((None, "the network output holds NaN or infinity; nothing written"))
                continue
            rgb = fused_rgb(fused[i][None], pair.chroma[None])[0] if has_colour(pair.chroma) else None
            w = maps[i].float().cpu() if maps is not None else None
            results.append((FusedImage(fused[i], rgb, w), None))
        return results


def fuse_pair(ir: Any, vis: Any, checkpoint: Any, **options: Any) -> FusedImage:
    """Fuse one infrared/visible pair in one call: ``Fuser(checkpoint, **options)(ir, vis)``.

    Build a :class:`Fuser` once instead when fusing many pairs (the checkpoint is loaded each call here).
    """
    call_options = {k: options.pop(k) for k in ("resize", "weights") if k in options}
    return Fuser(checkpoint, **options)(ir, vis, **call_options)


def _as_luma_chroma(image: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Luminance ``(1, H, W)`` and chroma ``(2, H, W)`` of a path, PIL image, numpy array or tensor."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, Image.Image):
        image.load()
        return array_to_luma_chroma(pil_to_array(image, what))
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3):
            t = t.permute(1, 2, 0)
        image = t.numpy()
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
            raise FusionInputError(f"{what}: expected an (H, W) or (H, W, 3) image, got shape {tuple(image.shape)}")
        if arr.dtype == np.uint8:
            pil = Image.fromarray(arr)
        elif arr.dtype == np.uint16 and arr.ndim == 2:
            pil = Image.fromarray(arr.astype(np.int32), mode="I")
        elif np.issubdtype(arr.dtype, np.floating):
            if not np.isfinite(arr).all():
                raise FusionInputError(f"{what} holds non-finite pixels (NaN or infinity)")
            if arr.ndim == 2:
                pil = Image.fromarray(arr.astype(np.float32), mode="F")
            else:  # as a colour file would hold it: 8 bits per channel
                pil = Image.fromarray((np.clip(arr, 0, 1) * 255.0).round().astype(np.uint8))
        else:
            raise FusionInputError(f"{what}: unsupported array type {arr.dtype} (use uint8, uint16 or float)")
        return array_to_luma_chroma(pil_to_array(pil, what))
    raise FusionInputError(f"{what}: expected a path, PIL image, numpy array or tensor, got {type(image).__name__}")


def _output_problem(out: Path, ir_dir: Path, vis_dir: Path) -> str | None:
    inputs = {ir_dir.resolve(), vis_dir.resolve()}
    for folder in (out, out / "Gray", out / "RGB", out / "Weights"):
        if folder.resolve() in inputs:
            return f"the output folder {folder} is an input folder; choose an --out outside --ir and --vis"
    return None


def _holds_files(folder: Path) -> bool:
    """Whether ``folder`` holds any file (empty subfolders, e.g. left by an earlier failed run, do not count)."""
    if not folder.is_dir():
        return folder.exists()
    return any(p.is_file() or p.is_symlink() for p in folder.rglob("*"))


def fuse_images(
    ir_dir: str | Path,
    vis_dir: str | Path,
    out_dir: str | Path,
    checkpoint: Any,
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    save_weights: bool = False,
    overwrite: bool = False,
    resize: bool = False,
    progress: bool = True,
    normalize: bool = True,
    precision: str = "fp32",
    fast: bool = True,
    tile_size: int | None = DEFAULT_TILE,
    tile_overlap: int = DEFAULT_OVERLAP,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> FuseSummary:
    """Fuse every infrared/visible pair of two folders and write the results (see the module docstring).

    Args:
        ir_dir: folder of infrared images.
        vis_dir: folder of visible images; paired with ``ir_dir`` by file stem.
        out_dir: output folder (``Gray/``, ``RGB/``, ``Weights/`` are made inside it); must not exist or hold no
            file unless ``overwrite``, and must not be (or contain as ``Gray/`` ...) an input folder.
        checkpoint: a checkpoint path (our format or a published ReFusion/TDFusion state dict, see
            :func:`tdfusion_core.training.checkpoints.load_model_checkpoint`), a loaded
            :class:`~tdfusion_core.training.checkpoints.ModelCheckpoint`, or any fusion ``nn.Module`` taking ``(B, 2, H, W)``
            and returning ``(B, 1, H, W)`` (it is moved to ``device`` and put in eval mode).
        device: where the networks run (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"`` ...); one this machine
            lacks is refused naming those it has.
        batch_size: pairs per forward pass; only pairs of equal size share a batch.
        save_weights: also write the loss generator's weight maps (the checkpoint must hold a loss generator).
        overwrite: allow a non-empty output folder; files of the same name are replaced.
        resize: resample a visible image whose size differs from its infrared partner onto the infrared grid,
            instead of refusing the whole run.
        progress: show a tqdm progress bar on stderr.
        normalize: min-max stretch each fused image to [0, 1] before writing, as the reference's ``test.py``;
            ``False`` writes the network output as it is.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (:mod:`tdfusion_core.common.precision`): the type the networks
            compute in; with the last two the summary reports the first pair's max difference to float32
            (``precision_error``).
        fast: run ReFusion through its fast exact pass (:mod:`tdfusion_core.nets.refusion_fast`, within 1e-5 of
            the eager network in float32) and keep freed memory for reuse (:func:`tdfusion_core.common.speed.keep_freed_memory`,
            process-wide); ``False`` runs the network module as it is.
        tile_size, tile_overlap, max_pixels: images larger than ``max_pixels`` pixels are fused in overlapping
            tiles of ``tile_size`` (see :func:`run_tiled`), so any size fits in memory.

    Returns:
        A :class:`FuseSummary`; ``summary.failed`` lists the pairs that could not be read (including images too
        large to decode safely) or whose fused output was not finite (nothing is written for them).

    Raises:
        FileNotFoundError: an input folder or the checkpoint does not exist.
        FileExistsError: ``out_dir`` holds files, and ``overwrite`` is false.
        FusionInputError: no pairs, an output folder that is an input folder, a size mismatch without ``resize``
            (:class:`ImageSizeMismatchError`), weight maps asked of a checkpoint without a loss generator, or a
            network that returns the wrong shape.
        tdfusion_core.training.checkpoints.CheckpointError: an unreadable checkpoint, one of the wrong architecture, or one
            holding NaN or infinity.
        tdfusion_core.common.atomic.OutputWriteError: a full disk or a read-only output folder (no partial image is left).
    """
    from tqdm import tqdm

    start = time.perf_counter()
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    ir, vis = list_images(ir_dir), list_images(vis_dir)
    names = sorted(ir.keys() & vis.keys())
    summary = FuseSummary(
        out_dir=Path(out_dir),
        unpaired_ir=sorted(ir[n].name for n in ir.keys() - vis.keys()),
        unpaired_vis=sorted(vis[n].name for n in vis.keys() - ir.keys()),
        device=str(device),
        precision=precision,
    )
    if not names:
        raise FusionInputError(
            f"no image in {ir_dir} has a partner of the same name in {vis_dir} "
            f"({len(ir)} infrared, {len(vis)} visible images)"
        )
    out = Path(out_dir)
    problem = _output_problem(out, Path(ir_dir), Path(vis_dir))
    if problem:
        raise FusionInputError(problem)
    if not overwrite and _holds_files(out):
        raise FileExistsError(f"output folder {out} already exists and is not empty; pass overwrite=True (--overwrite)")
    if not resize:
        _check_sizes(ir, vis, names)

    fuser = Fuser(
        checkpoint,
        device=device,
        normalize=normalize,
        tile_size=tile_size,
        tile_overlap=tile_overlap,
        max_pixels=max_pixels,
        precision=precision,
        fast=fast,
    )
    if save_weights and fuser.loss_generator is None:
        raise FusionInputError(
            "save_weights needs a checkpoint with a loss generator; this one holds only a fusion network"
        )
    summary.device = str(fuser.device)
    gray_dir, rgb_dir, weight_dir = out / "Gray", out / "RGB", out / "Weights"

    bar = tqdm(total=len(names), unit="pair", desc="fuse", disable=not progress, file=sys.stderr)
    # PNG encoding (0.1 s per 480x640 image, about a tenth of a fast pass) runs in a writer thread while the next
    # batch is fused; one batch is pending at most, so a write error surfaces one batch later at the latest
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tdfusion-write")
    pending: Future[None] | None = None
    try:
        for batch, consumed in _batches(names, ir, vis, batch_size, resize, summary.failed):
            if batch:
                done: list[tuple[str, FusedImage]] = []
                for pair, (result, error) in zip(batch, fuser.fuse_batch(batch, save_weights)):
                    if result is None:
                        summary.failed[pair.name] = error or "fusion failed"
                        continue
                    done.append((pair.name, result))
                    if result.rgb is not None:
                        summary.rgb.append(pair.name)
                    summary.fused.append(pair.name)
                if pending is not None:
                    pending.result()
                pending = writer.submit(_write_results, done, gray_dir, rgb_dir, weight_dir)
            bar.update(consumed)
        if pending is not None:
            pending.result()
    finally:
        writer.shutdown(wait=True)
        bar.close()
    summary.precision_error = getattr(fuser.fusion_net, "error_vs_fp32", None)
    summary.seconds = time.perf_counter() - start
    return summary
