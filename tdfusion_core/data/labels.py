"""Label files on disk -> core targets, and the problems found on the way.

Formats (all converted to the targets core knows, see :mod:`tdfusion_core.data.targets`):

* ``mask``: class-index images ``<split>/label/<name>.png`` -> ``LongTensor (H, W)`` (255 = ignore);
* ``yolo``: ``<split>/labels/<name>.txt`` with one ``class cx cy w h`` line per box, normalised to [0, 1]
  (x by the image WIDTH, y by its HEIGHT) -> ``Tensor (N, 5)`` rows ``class, x0, y0, x1, y1`` in pixels;
* ``annotations``: the released TDFusion code's list file, one line per image ``name x0,y0,x1,y1,cls ...`` in pixels
  of the image size the list was written for (``annotation_size``; default: the image's own size) -> pixel boxes
  rescaled to the actual image. (The released loader divides x by the height and y by the width; we do not.)
* ``voc``: Pascal-VOC XML (``<object><name>`` / ``<bndbox>``), the published form of LLVIP and M3FD.

Every reader reports :class:`Problem` objects naming the file instead of raising on the first fault, so the same
code serves ``tdfusion data check`` (collect all problems) and the datasets (raise :class:`DataError` unless
``skip_bad``).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import attrs
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

LABEL_FORMATS = ("mask", "yolo", "annotations", "voc", "none")
#: default folder (relative to the split folder) of each folder-based label format
DEFAULT_LABEL_DIRS = {"mask": "label", "yolo": "labels", "voc": "Annotations"}
#: class-name files looked for in the label folder (then the split folder, then the root)
CLASS_FILES = ("classes.txt", "classes.names")
#: tolerance for normalised YOLO coordinates slightly outside [0, 1] (rounding in label tools); clipped after
YOLO_TOLERANCE = 1e-3

#: problem kinds reported by the readers and by ``tdfusion data check``
PROBLEM_KINDS = (
    "missing-partner",  # a source image (or label) without its partner in another folder
    "missing-label",  # an image pair without a label where the dataset has labels
    "size-mismatch",  # sources of different sizes, or a mask of another size than the images
    "unreadable",  # a missing, truncated or undecodable file
    "non-finite",  # a floating-point image with NaN or infinite pixels
    "mask-range",  # mask values outside 0..num_classes-1 (and not the ignore index)
    "bad-label",  # a label line that cannot be parsed, or an unknown / out-of-range class
    "box-outside",  # a box outside the image
    "box-size",  # a box of non-positive width or height
    "empty-label",  # a label file without any box
)


@attrs.frozen
class Problem:
    """One fault in a dataset, naming the file it is in."""

    path: Path
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message} [{self.kind}]"


class DataError(ValueError):
    """A sample that cannot be loaded; :attr:`problems` names each faulty file."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        lines = "\n  ".join(str(p) for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in the dataset:\n  {lines}")

    def __reduce__(self) -> tuple[type[DataError], tuple[list[Problem]]]:
        # rebuilt from its problems when it comes back from a data-loading worker process
        return (type(self), (self.problems,))


def empty_boxes() -> torch.Tensor:
    """A ``(0, 5)`` float box tensor."""
    return torch.zeros(0, 5, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------- class names
def read_class_names(path: str | Path) -> tuple[str, ...]:
    """Class names from a ``classes.txt`` file, one per line (blank lines ignored)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return tuple(line.strip() for line in lines if line.strip())


def find_class_names(*folders: Path | None) -> tuple[str, ...] | None:
    """The class names of the first ``classes.txt`` (or ``classes.names``) found in ``folders``, else ``None``."""
    for folder in folders:
        if folder is None:
            continue
        for fname in CLASS_FILES:
            if (folder / fname).is_file():
                return read_class_names(folder / fname)
    return None


# ---------------------------------------------------------------------------------------------------- masks
def read_mask(
    path: Path, image_size: tuple[int, int] | None, num_classes: int | None, ignore_index: int = 255
) -> tuple[torch.Tensor | None, list[Problem]]:
    """Read a class-index mask as ``LongTensor (H, W)``; problems for a bad file, size or value range.

    Palette (``P``) PNGs give their indices, grayscale PNGs their values; a colour mask is refused (convert it to
    class indices first). ``num_classes=None`` only checks that values are not negative.
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "L", "1", "I", "I;16", "I;16B", "I;16L"):
                arr = np.asarray(im).astype(np.int64)
            elif im.mode in ("RGB", "RGBA", "LA"):
                rgb = np.asarray(im.convert("RGB")).astype(np.int64)
                if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])):
                    return None, [Problem(path, "bad-label", "colour mask; class-index masks are expected")]
                arr = rgb[..., 0]
            else:
                return None, [Problem(path, "bad-label", f"unsupported mask mode {im.mode}")]
    except FileNotFoundError:
        return None, [Problem(path, "unreadable", "mask not found")]
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return None, [Problem(path, "unreadable", f"cannot read mask: {exc}")]
    problems: list[Problem] = []
    if image_size is not None and tuple(arr.shape) != tuple(image_size):
        problems.append(
            Problem(
                path,
                "size-mismatch",
                f"mask is {arr.shape[0]}x{arr.shape[1]} but the images are {image_size[0]}x{image_size[1]}",
            )
        )
    valid = arr == ignore_index
    valid |= (arr >= 0) & (arr < num_classes) if num_classes is not None else arr >= 0
    if not valid.all():
        bad = sorted({int(v) for v in np.unique(arr[~valid])})
        shown = ", ".join(map(str, bad[:8])) + (", ..." if len(bad) > 8 else "")
        allowed = f"0..{num_classes - 1}" if num_classes is not None else "non-negative values"
        problems.append(
            Problem(path, "mask-range", f"mask values {shown} outside {allowed} (ignore index {ignore_index})")
        )
    return torch.from_numpy(arr), problems


# ---------------------------------------------------------------------------------------------------- boxes
def _check_class(path: Path, where: str, cls: float, num_classes: int | None) -> Problem | None:
    if not float(cls).is_integer() or cls < 0 or (num_classes is not None and cls >= num_classes):
        allowed = f"0..{num_classes - 1}" if num_classes is not None else "a non-negative integer"
        return Problem(path, "bad-label", f"{where}: class {cls:g} is not {allowed}")
    return None


def check_pixel_boxes(
    path: Path, boxes: torch.Tensor, height: float, width: float, where: Sequence[str], tolerance: float = 0.5
) -> list[Problem]:
    """Problems of pixel boxes ``(N, 5)``: non-positive size, or reaching outside ``[0, width] x [0, height]``.

    ``tolerance`` (pixels) accepts coordinates rounded just past the border.
    """
    problems: list[Problem] = []
    for row, label in zip(boxes.tolist(), where):
        _, x0, y0, x1, y1 = row
        if not all(math.isfinite(v) for v in row):
            problems.append(Problem(path, "bad-label", f"{label}: non-finite coordinate"))
        elif x1 <= x0 or y1 <= y0:
            problems.append(Problem(path, "box-size", f"{label}: box has non-positive size ({x1 - x0:g}x{y1 - y0:g})"))
        elif x0 < -tolerance or y0 < -tolerance or x1 > width + tolerance or y1 > height + tolerance:
            problems.append(
                Problem(
                    path,
                    "box-outside",
                    f"{label}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) reaches outside the {width:g}x{height:g} image",
                )
            )
    return problems


def yolo_to_pixel_boxes(rows: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(N, 5)`` YOLO rows ``class cx cy w h`` (x normalised by ``width``, y by ``height``) -> pixel boxes."""
    out = torch.empty(rows.shape[0], 5, dtype=torch.float32)
    if rows.shape[0] == 0:
        return out
    rows = rows.double()
    cx, cy, w, h = rows[:, 1] * width, rows[:, 2] * height, rows[:, 3] * width, rows[:, 4] * height
    out[:, 0] = rows[:, 0].float()
    out[:, 1], out[:, 2] = (cx - w / 2).float(), (cy - h / 2).float()
    out[:, 3], out[:, 4] = (cx + w / 2).float(), (cy + h / 2).float()
    return out


def pixel_to_yolo_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel boxes ``(N, 5)`` -> YOLO rows ``class cx cy w h`` normalised by ``width`` (x) and ``height`` (y)."""
    b = boxes.double()
    out = torch.empty(b.shape[0], 5, dtype=torch.float64)
    out[:, 0] = b[:, 0]
    out[:, 1] = (b[:, 1] + b[:, 3]) / 2 / width
    out[:, 2] = (b[:, 2] + b[:, 4]) / 2 / height
    out[:, 3] = (b[:, 3] - b[:, 1]) / width
    out[:, 4] = (b[:, 4] - b[:, 2]) / height
    return out


def _box_numbers(
    path: Path, where: str, fields: list[str], text: str, layout: str, class_at: int, num_classes: int | None
) -> list[float] | Problem:
    """The five numbers of one box (its class at index ``class_at``), or the problem that rejects it: fields that
    are not numbers, another count than five (``layout`` says which five), or a bad class."""
    try:
        values = [float(v) for v in fields]
    except ValueError:
        return Problem(path, "bad-label", f"{where}: not numbers: {text!r}")
    if len(values) != 5:
        return Problem(path, "bad-label", f"{where}: {len(values)} fields, expected {layout}")
    bad_class = _check_class(path, where, values[class_at], num_classes)
    return values if bad_class is None else bad_class


def read_yolo(
    path: Path, image_size: tuple[int, int], num_classes: int | None, allow_empty: bool = False
) -> tuple[torch.Tensor | None, list[Problem]]:
    """Read a YOLO label file as pixel boxes ``(N, 5)`` for an image of ``image_size`` ``(H, W)``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, [Problem(path, "unreadable", "label file not found")]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Problem(path, "unreadable", f"cannot read label file: {exc}")]
    problems: list[Problem] = []
    rows: list[list[float]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"line {lineno}"
        values = _box_numbers(path, where, line.split(), line.strip(), "5 (class cx cy w h)", 0, num_classes)
        if isinstance(values, Problem):
            problems.append(values)
            continue
        _, cx, cy, w, h = values
        if not all(math.isfinite(v) for v in values):
            problems.append(Problem(path, "bad-label", f"{where}: non-finite value"))
        elif w <= 0 or h <= 0:
            problems.append(Problem(path, "box-size", f"{where}: box has non-positive size (w={w:g}, h={h:g})"))
        elif min(cx - w / 2, cy - h / 2) < -YOLO_TOLERANCE or max(cx + w / 2, cy + h / 2) > 1 + YOLO_TOLERANCE:
            problems.append(
                Problem(path, "box-outside", f"{where}: box (cx={cx:g}, cy={cy:g}, w={w:g}, h={h:g}) leaves [0, 1]")
            )
        else:
            rows.append(values)
    if not rows and not problems and not allow_empty:
        problems.append(Problem(path, "empty-label", "label file has no boxes"))
    height, width = image_size
    boxes = yolo_to_pixel_boxes(torch.tensor(rows, dtype=torch.float64).reshape(-1, 5), height, width)
    return _clip(boxes, height, width), problems


def _clip(boxes: torch.Tensor, height: float, width: float) -> torch.Tensor:
    """Clip accepted boxes (within tolerance) exactly to the image."""
    out = boxes.clone()
    out[:, 1::2] = out[:, 1::2].clamp(0, width)
    out[:, 2::2] = out[:, 2::2].clamp(0, height)
    return out


def _rescaled(
    path: Path,
    rows: list[list[float]],
    labels: list[str],
    annotation_size: tuple[float, float],
    image_size: tuple[int, int],
    problems: list[Problem],
    tolerance: float,
) -> tuple[torch.Tensor, list[Problem]]:
    """Pixel boxes ``rows`` of ``annotation_size`` checked (:func:`check_pixel_boxes`; its problems join
    ``problems``), then scaled to ``image_size`` and clipped to it; no boxes if any is bad."""
    boxes = torch.tensor(rows, dtype=torch.float64).reshape(-1, 5)
    (ah, aw), (height, width) = annotation_size, image_size
    bad = check_pixel_boxes(path, boxes, ah, aw, labels, tolerance=tolerance)
    problems += bad
    if bad:
        return empty_boxes(), problems
    boxes[:, 1::2] *= width / aw
    boxes[:, 2::2] *= height / ah
    return _clip(boxes.float(), height, width), problems


def parse_annotation_list(path: Path) -> tuple[dict[str, tuple[int, str]], list[Problem]]:
    """Read the released code's list file: ``{stem: (line number, box text)}``; duplicates are problems."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, [Problem(path, "unreadable", "annotation list not found")]
    except (OSError, UnicodeDecodeError) as exc:
        return {}, [Problem(path, "unreadable", f"cannot read annotation list: {exc}")]
    entries: dict[str, tuple[int, str]] = {}
    problems: list[Problem] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split(maxsplit=1)
        if not parts:
            continue
        stem = Path(parts[0].replace("\\", "/")).stem
        if stem in entries:
            problems.append(
                Problem(path, "bad-label", f"line {lineno}: {stem!r} already listed on line {entries[stem][0]}")
            )
            continue
        entries[stem] = (lineno, parts[1] if len(parts) > 1 else "")
    return entries, problems


def read_annotation_boxes(
    path: Path,
    lineno: int,
    box_text: str,
    image_size: tuple[int, int],
    num_classes: int | None,
    annotation_size: tuple[int, int] | None = None,
    allow_empty: bool = False,
) -> tuple[torch.Tensor, list[Problem]]:
    """Boxes of one annotation-list line (``x0,y0,x1,y1,cls`` groups) as pixel boxes of ``image_size``.

    The coordinates are pixels of ``annotation_size`` ``(H, W)`` (default ``image_size``): x scales by the width
    ratio and y by the height ratio.
    """
    ah, aw = annotation_size if annotation_size is not None else image_size
    problems: list[Problem] = []
    rows: list[list[float]] = []
    labels: list[str] = []
    for k, group in enumerate(box_text.split(), 1):
        where = f"line {lineno}, box {k}"
        values = _box_numbers(path, where, group.split(","), group, "x0,y0,x1,y1,cls", 4, num_classes)
        if isinstance(values, Problem):
            problems.append(values)
            continue
        rows.append([values[4], *values[:4]])
        labels.append(where)
    if not rows and not problems and not allow_empty:
        problems.append(Problem(path, "empty-label", f"line {lineno}: no boxes"))
    return _rescaled(path, rows, labels, (ah, aw), image_size, problems, tolerance=0.5)


def read_voc(
    path: Path, image_size: tuple[int, int], class_names: Sequence[str] | None, allow_empty: bool = False
) -> tuple[torch.Tensor | None, list[Problem]]:
    """Read a Pascal-VOC XML file as pixel boxes of ``image_size``; class names map case-insensitively.

    Coordinates are pixels of the XML's ``<size>`` (default ``image_size``), rescaled to ``image_size``.
    """
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        return None, [Problem(path, "unreadable", "annotation file not found")]
    except (ET.ParseError, OSError) as exc:
        return None, [Problem(path, "unreadable", f"cannot parse XML: {exc}")]
    height, width = image_size
    ah, aw = float(height), float(width)
    size = root.find("size")
    if size is not None:
        try:
            aw, ah = float(size.findtext("width", "")), float(size.findtext("height", ""))
        except ValueError:
            ah, aw = float(height), float(width)
        if aw <= 0 or ah <= 0:
            ah, aw = float(height), float(width)
    lookup = {name.lower(): i for i, name in enumerate(class_names or ())}
    problems: list[Problem] = []
    rows: list[list[float]] = []
    labels: list[str] = []
    for k, obj in enumerate(root.iter("object"), 1):
        where = f"object {k}"
        name = (obj.findtext("name") or "").strip()
        if name.lower() not in lookup:
            problems.append(Problem(path, "bad-label", f"{where}: unknown class {name!r}"))
            continue
        box = obj.find("bndbox")
        try:
            coords = [float(box.findtext(t, "")) for t in ("xmin", "ymin", "xmax", "ymax")] if box is not None else []
        except ValueError:
            coords = []
        if len(coords) != 4:
            problems.append(Problem(path, "bad-label", f"{where}: missing or malformed <bndbox>"))
            continue
        rows.append([float(lookup[name.lower()]), *coords])
        labels.append(where)
    if not rows and not problems and not allow_empty:
        problems.append(Problem(path, "empty-label", "annotation has no objects"))
    return _rescaled(path, rows, labels, (ah, aw), image_size, problems, tolerance=1.0)
