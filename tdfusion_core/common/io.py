"""Reading and writing images as float tensors in [0, 1], with errors that name the file.

Grayscale images (PIL modes L, I;16, I, F, and 1-channel PNGs) read as luminance with neutral chroma (0.5); colour
images are converted to YCbCr (BT.601, full range, through :mod:`tdfusion_core.common.colour`). 16-bit images are scaled
by 65535. Floating-point images (mode F) are clipped to [0, 1]; one holding NaN or infinity is refused
(:class:`NonFiniteImageError`, naming the file and the first bad pixel).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from tdfusion_core.common.colour import rgb_to_ycbcr, ycbcr_to_rgb

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageReadError(OSError):
    """An image file that is missing, unreadable, truncated or of an unsupported kind."""


class NonFiniteImageError(ImageReadError):
    """A floating-point image holding NaN or infinite pixels: refused, never clipped or passed on."""


def _finite_float(path: Path, arr: np.ndarray) -> np.ndarray:
    bad = ~np.isfinite(arr)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise NonFiniteImageError(
            f"{path} has {int(bad.sum())} non-finite pixel(s) (NaN or infinity), the first at row {row}, column "
            f"{col}; repair or remove the file"
        )
    return np.clip(arr, 0.0, 1.0)


def pil_to_array(im: Image.Image, name: str | Path = "image") -> np.ndarray:
    """A loaded PIL image as float32 ``(H, W)`` (grayscale) or ``(H, W, 3)`` (colour) in [0, 1] (see the module
    docstring); ``name`` is used in errors."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        ints = np.asarray(im)
        if ints.size and (int(ints.max()) > 65535 or int(ints.min()) < 0):
            raise ImageReadError(
                f"{name} holds integers from {int(ints.min())} to {int(ints.max())}, outside the 16-bit "
                "range 0..65535 this reader scales by 65535; convert it to 16-bit or to float in [0, 1]"
            )
        return ints.astype(np.float32) / 65535.0
    if mode == "F":
        return _finite_float(Path(name), np.asarray(im, dtype=np.float32))
    if mode in ("L", "1", "LA"):
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    if np.allclose(rgb[..., 0], rgb[..., 1]) and np.allclose(rgb[..., 1], rgb[..., 2]):
        return rgb[..., 0].copy()  # a colour file holding a gray image
    return rgb


def read_array(path: str | Path) -> np.ndarray:
    """Read ``path`` as float32 ``(H, W)`` (grayscale) or ``(H, W, 3)`` (colour) in [0, 1]."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return pil_to_array(im, path)
    except ImageReadError:
        raise
    except FileNotFoundError as exc:
        raise ImageReadError(f"image not found: {path}") from exc
    except Image.DecompressionBombError as exc:
        raise ImageReadError(
            f"{path} is too large to decode safely ({exc}); a decompression bomb, or raise PIL.Image.MAX_IMAGE_PIXELS "
            "if the image is genuine"
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from exc


def read_image(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read ``path`` as luminance ``(1, H, W)`` and chroma ``(2, H, W)`` float tensors in [0, 1]."""
    return array_to_luma_chroma(read_array(path))


def array_to_luma_chroma(arr: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Float ``(H, W)`` or ``(H, W, 3)`` in [0, 1] -> luminance ``(1, H, W)`` and chroma ``(2, H, W)``."""
    if arr.ndim == 2:
        y = torch.from_numpy(arr)[None]
        return y, torch.full((2, *arr.shape), 0.5)
    y, chroma = rgb_to_ycbcr(torch.from_numpy(arr).permute(2, 0, 1))
    return y.clamp(0, 1), chroma


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``(1|3, H, W)`` float in [0, 1] -> ``(H, W)`` or ``(H, W, 3)`` uint8, rounding to nearest."""
    arr = (image.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
    return arr[0] if arr.shape[0] == 1 else np.ascontiguousarray(arr.transpose(1, 2, 0))


def write_image(path: str | Path, image: torch.Tensor) -> None:
    """Write ``(1|3, H, W)`` float in [0, 1] as an 8-bit image (format from the suffix); creates parent folders.

    Written through a temporary file and a rename (:func:`tdfusion_core.common.atomic.atomic_write`, without fsync), so
    an interrupted write never leaves a truncated image under the final name; a full disk or a read-only folder is
    a one-line :class:`~tdfusion_core.common.atomic.OutputWriteError`.
    """
    from tdfusion_core.common.atomic import atomic_write

    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot write {path}: unknown image suffix {path.suffix!r}")
    picture = Image.fromarray(to_uint8(image))
    atomic_write(path, lambda fh: picture.save(fh, format=fmt), fsync=False)


def write_fused(path: str | Path, fused_y: torch.Tensor, chroma: torch.Tensor | None = None) -> None:
    """Write the fused luminance ``(1, H, W)``, as RGB when ``chroma`` ``(2, H, W)`` (already mixed) is given."""
    write_image(path, fused_y if chroma is None else ycbcr_to_rgb(fused_y, chroma))


def list_images(folder: str | Path) -> dict[str, Path]:
    """``{stem: path}`` of the image files directly in ``folder`` (error naming the folder if it does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            if p.stem in found:
                raise ValueError(f"two images share the name {p.stem!r} in {folder}: {found[p.stem].name}, {p.name}")
            found[p.stem] = p
    return found
