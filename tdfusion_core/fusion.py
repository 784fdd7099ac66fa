"""Fusing folders of infrared/visible image pairs with a trained fusion network (``tdfusion fuse``).

What :func:`fuse_images` does, following the reference's ``test.py``:

* pairs the files of the two folders by name (file stem; the suffix may differ) and lists the names found in only
  one folder;
* reads each pair as luminance + chroma (:func:`tdfusion_core.io.read_image`), stacks the luminances as
  ``(B, 2, H, W)`` (infrared first), pads them to the network's ``size_multiple`` (replicating the border) and crops
  the output back;
* by default stretches each fused image to [0, 1] (min-max, as the reference's ``test.py`` does before saving);
* writes ``Gray/<name>.png`` (the fused luminance) and, when either source has colour, ``RGB/<name>.png``: the fused
  luminance with the chroma of the sources mixed by saturation (:func:`tdfusion_core.colour.mix_chroma`; a gray
  source contributes nothing, so one colour source passes its chroma through). Gray in, gray out;
* optionally writes the loss generator's per-pixel source weights as colour-mapped PNGs
  (``Weights/<name>_ir.png``, ``Weights/<name>_vis.png``; matplotlib's viridis when matplotlib is installed, else a
  built-in approximation of it).

Bad input: a pair whose images differ in size raises :class:`ImageSizeMismatchError` naming both files before anything
is fused (``resize=True`` instead resamples the visible image onto the infrared grid); an unreadable or truncated
image is listed in :attr:`FuseSummary.failed` and the other pairs are still fused; a non-empty output folder is
refused unless ``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from tdfusion_core.colour import fused_rgb, has_colour
from tdfusion_core.devices import pick_device
from tdfusion_core.io import ImageReadError, list_images, read_image, write_image

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


# ---------------------------------------------------------------------------------------------------- colour maps

#: matplotlib's viridis at 0, 1/8, ..., 1: the fallback map, linearly interpolated, when matplotlib is not installed
#: (within 0.07 of viridis per channel).
_VIRIDIS_ANCHORS = np.array(
    [
        [0.267004, 0.004874, 0.329415],
        [0.278826, 0.175490, 0.483397],
        [0.229739, 0.322361, 0.545706],
        [0.172719, 0.448791, 0.557885],
        [0.127568, 0.566949, 0.550556],
        [0.157851, 0.683765, 0.501686],
        [0.369214, 0.788888, 0.382914],
        [0.678489, 0.863742, 0.189503],
        [0.993248, 0.906157, 0.143936],
    ]
)


def colormap(values: np.ndarray, name: str = "viridis") -> np.ndarray:
    """Map ``(H, W)`` values in [0, 1] to ``(H, W, 3)`` RGB in [0, 1].

    Uses matplotlib's colour map ``name`` when matplotlib is installed; otherwise a piecewise-linear
    approximation of viridis (whatever ``name`` says), so weight maps can be written without matplotlib.
    """
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    try:
        import matplotlib

        return np.asarray(matplotlib.colormaps[name](values)[..., :3])
    except ImportError:
        pass
    pos = values * (len(_VIRIDIS_ANCHORS) - 1)
    lo = np.minimum(np.floor(pos).astype(int), len(_VIRIDIS_ANCHORS) - 2)
    frac = (pos - lo)[..., None]
    return _VIRIDIS_ANCHORS[lo] * (1 - frac) + _VIRIDIS_ANCHORS[lo + 1] * frac


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


def _resample(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(C, H, W)`` -> ``(C, *size)``, bilinear with antialiasing."""
    if tuple(image.shape[-2:]) == size:
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def _read_pair(name: str, ir_path: Path, vis_path: Path, resize: bool) -> _Pair:
    ir_y, ir_c = read_image(ir_path)
    vis_y, vis_c = read_image(vis_path)
    size = (int(ir_y.shape[-2]), int(ir_y.shape[-1]))
    if tuple(vis_y.shape[-2:]) != size:
        if not resize:
            raise ImageSizeMismatchError(
                f"{ir_path} is {size[1]}x{size[0]} but {vis_path} is {vis_y.shape[-1]}x{vis_y.shape[-2]}"
            )
        vis_y, vis_c = _resample(vis_y, size).clamp(0, 1), _resample(vis_c, size).clamp(0, 1)
    return _Pair(name, torch.cat([ir_y, vis_y], 0), torch.stack([ir_c, vis_c], 0))


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


AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def amp_dtype_for(device: str | torch.device, name: str = "auto") -> torch.dtype:
    """The autocast dtype: ``"bfloat16"``, ``"float16"``, or ``"auto"`` (float16 on CUDA, bfloat16 elsewhere).

    ``auto`` prefers float16 on GPUs because its 10-bit mantissa keeps the ReFusion output within 2/255 of float32
    (max |diff| about 0.002 with the published weights), where bfloat16's 7 bits give about 0.01-0.016; the
    network's activations stay far below float16's range. On the CPU float16 kernels are slow, so ``auto`` is
    bfloat16 there.
    """
    if name == "auto":
        return torch.float16 if pick_device(device).type == "cuda" else torch.bfloat16
    if name not in AMP_DTYPES:
        raise ValueError(f"amp dtype must be auto, bfloat16 or float16, not {name!r}")
    return AMP_DTYPES[name]


def autocast(device: torch.device, enabled: bool, dtype: str = "auto") -> contextlib.AbstractContextManager[Any]:
    """An autocast context for ``device`` with :func:`amp_dtype_for`'s dtype, or a no-op when not ``enabled``."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype_for(device, dtype))


def _resolve_model(checkpoint: Any) -> tuple[nn.Module, nn.Module | None]:
    from tdfusion_core.checkpoints import ModelCheckpoint, load_model_checkpoint

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


# ------------------------------------------------------------------------------------------------------ public API


def fuse_images(
    ir_dir: str | Path,
    vis_dir: str | Path,
    out_dir: str | Path,
    checkpoint: Any,
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    amp: bool = False,
    save_weights: bool = False,
    overwrite: bool = False,
    resize: bool = False,
    progress: bool = True,
    normalize: bool = True,
    amp_dtype: str = "auto",
) -> FuseSummary:
    """Fuse every infrared/visible pair of two folders and write the results (see the module docstring).

    Args:
        ir_dir: folder of infrared images.
        vis_dir: folder of visible images; paired with ``ir_dir`` by file stem.
        out_dir: output folder (``Gray/``, ``RGB/``, ``Weights/`` are made inside it); must not exist or be empty
            unless ``overwrite``.
        checkpoint: a checkpoint path (our format or a published ReFusion/TDFusion state dict, see
            :func:`tdfusion_core.checkpoints.load_model_checkpoint`), a loaded
            :class:`~tdfusion_core.checkpoints.ModelCheckpoint`, or any fusion ``nn.Module`` taking ``(B, 2, H, W)``
            and returning ``(B, 1, H, W)`` (it is moved to ``device`` and put in eval mode).
        device: where the networks run (``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...).
        batch_size: pairs per forward pass; only pairs of equal size share a batch.
        amp: run the networks under autocast (outputs are cast back to float32).
        save_weights: also write the loss generator's weight maps (the checkpoint must hold a loss generator).
        overwrite: allow a non-empty output folder; files of the same name are replaced.
        resize: resample a visible image whose size differs from its infrared partner onto the infrared grid,
            instead of refusing the whole run.
        progress: show a tqdm progress bar on stderr.
        normalize: min-max stretch each fused image to [0, 1] before writing, as the reference's ``test.py``;
            ``False`` writes the network output as it is.
        amp_dtype: autocast dtype with ``amp``: ``"auto"`` (float16 on CUDA, bfloat16 elsewhere; see
            :func:`amp_dtype_for`), ``"bfloat16"`` or ``"float16"``.

    Returns:
        A :class:`FuseSummary`; ``summary.failed`` lists the pairs that could not be read.

    Raises:
        FileNotFoundError: an input folder or the checkpoint does not exist.
        FileExistsError: ``out_dir`` exists and is not empty, and ``overwrite`` is false.
        FusionInputError: no pairs, a size mismatch without ``resize`` (:class:`ImageSizeMismatchError`), weight maps
            asked of a checkpoint without a loss generator, or a network that returns the wrong shape.
        tdfusion_core.checkpoints.CheckpointError: an unreadable checkpoint or one of the wrong architecture.
    """
    from tqdm import tqdm

    start = time.perf_counter()
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    amp_dtype_for(device, amp_dtype)  # an unknown dtype name fails before any work
    ir, vis = list_images(ir_dir), list_images(vis_dir)
    names = sorted(ir.keys() & vis.keys())
    summary = FuseSummary(
        out_dir=Path(out_dir),
        unpaired_ir=sorted(ir[n].name for n in ir.keys() - vis.keys()),
        unpaired_vis=sorted(vis[n].name for n in vis.keys() - ir.keys()),
        device=str(device),
    )
    if not names:
        raise FusionInputError(
            f"no image in {ir_dir} has a partner of the same name in {vis_dir} "
            f"({len(ir)} infrared, {len(vis)} visible images)"
        )
    out = Path(out_dir)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"output folder {out} already exists and is not empty; pass overwrite=True (--overwrite)")
    if not resize:
        _check_sizes(ir, vis, names)

    fusion_net, loss_generator = _resolve_model(checkpoint)
    if save_weights and loss_generator is None:
        raise FusionInputError(
            "save_weights needs a checkpoint with a loss generator; this one holds only a fusion network"
        )
    dev = pick_device(device)
    fusion_net = fusion_net.to(dev).eval()
    if loss_generator is not None:
        loss_generator = loss_generator.to(dev).eval()
    multiple = max(int(getattr(fusion_net, "size_multiple", 1)), 1)
    gray_dir, rgb_dir, weight_dir = out / "Gray", out / "RGB", out / "Weights"
    gray_dir.mkdir(parents=True, exist_ok=True)

    bar = tqdm(total=len(names), unit="pair", desc="fuse", disable=not progress, file=sys.stderr)
    try:
        for batch, consumed in _batches(names, ir, vis, batch_size, resize, summary.failed):
            if batch:
                _fuse_batch(
                    batch,
                    fusion_net,
                    loss_generator if save_weights else None,
                    dev,
                    amp,
                    amp_dtype,
                    multiple,
                    normalize,
                    (gray_dir, rgb_dir, weight_dir),
                    summary,
                )
            bar.update(consumed)
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _fuse_batch(
    batch: list[_Pair],
    fusion_net: nn.Module,
    loss_generator: nn.Module | None,
    device: torch.device,
    amp: bool,
    amp_dtype: str,
    multiple: int,
    normalize: bool,
    folders: tuple[Path, Path, Path],
    summary: FuseSummary,
) -> None:
    gray_dir, rgb_dir, weight_dir = folders
    x = torch.stack([p.y for p in batch]).to(device)
    h, w = x.shape[-2:]
    padded = _pad(x, multiple)
    with torch.inference_mode(), autocast(device, amp, amp_dtype):
        fused = fusion_net(padded)
        weights = loss_generator(padded) if loss_generator is not None else None
    if fused.ndim != 4 or fused.shape[0] != x.shape[0] or fused.shape[1] != 1:
        raise FusionInputError(
            f"the fusion network returned shape {tuple(fused.shape)} for input {tuple(padded.shape)}; "
            "expected (B, 1, H, W)"
        )
    fused = fused[..., :h, :w].float()
    if normalize:
        fused = _minmax(fused)
    fused = fused.clamp(0, 1).cpu()
    for i, pair in enumerate(batch):
        write_image(gray_dir / f"{pair.name}.png", fused[i])
        if has_colour(pair.chroma):
            write_image(rgb_dir / f"{pair.name}.png", fused_rgb(fused[i][None], pair.chroma[None])[0])
            summary.rgb.append(pair.name)
        if weights is not None:
            _write_weights(weight_dir, pair.name, weights[i, :, :h, :w].float().cpu())
        summary.fused.append(pair.name)
