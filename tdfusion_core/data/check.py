"""The checks of ``tdfusion data check``: everything that would make a loader fail, listed at once.

Reported (each :class:`~tdfusion_core.data.labels.Problem` names its file): source images without their partners,
labels without images and images without labels, size mismatches between sources (and between masks and images),
unreadable or truncated files, images with NaN or infinite pixels, images too large to decode safely, mask values
outside the class range (classes from ``--num-classes``, else a ``classes.txt`` in the label folder, the split
folder or the dataset root), box lines that do not parse or name an unknown
class, boxes outside the image or of non-positive size, and label files without any box. The datasets raise the
same problems (they share the readers), unless ``skip_bad=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tdfusion_core.data.labels import DEFAULT_LABEL_DIRS, Problem, find_class_names
from tdfusion_core.data.paired import PairedDataset


def _label_formats(split_dir: Path) -> list[str]:
    found = [fmt for fmt in ("mask", "yolo", "voc") if (split_dir / DEFAULT_LABEL_DIRS[fmt]).is_dir()]
    return found or ["none"]


def check_split(
    split_dir: str | Path,
    sources: Sequence[str] = ("ir", "vi"),
    num_classes: int | None = None,
    labels: Sequence[str] | None = None,
    annotations: str | Path | None = None,
    annotation_size: Sequence[int] | None = None,
    allow_empty: bool = False,
) -> tuple[list[Problem], int]:
    """Problems of one split folder (holding the source folders) and the number of complete pairs in it.

    ``labels`` defaults to every label folder present (``label/`` masks, ``labels/`` YOLO, ``Annotations/`` VOC);
    ``annotations`` adds the released code's list file. Class names come from ``classes.txt`` files unless
    ``num_classes`` is given.
    """
    split_dir = Path(split_dir)
    formats = list(labels) if labels is not None else _label_formats(split_dir)
    if annotations is not None and "annotations" not in formats:
        formats = [f for f in formats if f != "none"] + ["annotations"]
    problems: dict[Problem, None] = {}  # ordered and without duplicates (sources are read once per format)
    missing = [split_dir / s for s in sources if not (split_dir / s).is_dir()]
    if missing:
        return [Problem(m, "missing-partner", "source folder not found") for m in missing], 0
    pairs = 0
    # a classes.txt beside the split folders (the dataset root) counts too, as it does for the datasets
    class_names = None
    if num_classes is None and find_class_names(split_dir) is None:
        class_names = find_class_names(split_dir.parent)
    for fmt in formats:
        try:
            dataset = PairedDataset(
                split_dir,
                split=None,
                sources=sources,
                labels=fmt,
                class_names=class_names if fmt != "none" else None,
                annotations=annotations if fmt == "annotations" else None,
                annotation_size=annotation_size,
                num_classes=num_classes,
                skip_bad=True,
                allow_empty=allow_empty,
                log_skipped=False,
            )
        except (OSError, ValueError) as exc:  # a missing label folder, two images sharing a name
            problems[Problem(split_dir, "unreadable", str(exc))] = None
            continue
        problems.update(dict.fromkeys(dataset.check()))
        pairs = max(pairs, len(dataset.paired_names))
    return list(problems), pairs


def find_splits(path: str | Path, sources: Sequence[str] = ("ir", "vi")) -> list[Path]:
    """The split folders under ``path``: ``path`` itself if it holds the first source folder, else its subfolders
    that do (sorted)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {path}")
    if (path / sources[0]).is_dir():
        return [path]
    splits = sorted(p for p in path.iterdir() if p.is_dir() and (p / sources[0]).is_dir())
    if not splits:
        raise FileNotFoundError(
            f"no source folder {sources[0]!r} in {path} or its subfolders (expected <root>/<split>/{sources[0]}/)"
        )
    return splits


def check_dataset(
    path: str | Path,
    sources: Sequence[str] = ("ir", "vi"),
    num_classes: int | None = None,
    labels: Sequence[str] | None = None,
    allow_empty: bool = False,
) -> tuple[list[Problem], dict[str, int]]:
    """Problems of every split under ``path`` and the number of pairs per split folder."""
    problems: list[Problem] = []
    counts: dict[str, int] = {}
    for split_dir in find_splits(path, sources):
        found, pairs = check_split(split_dir, sources, num_classes, labels, allow_empty=allow_empty)
        problems += found
        counts[str(split_dir)] = pairs
    return problems, counts
