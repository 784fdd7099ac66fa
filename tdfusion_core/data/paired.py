"""Registered multi-source image folders as a dataset of :class:`~tdfusion_core.data.Sample`.

Layout (the one TDFusion's released code and the public fusion datasets use)::

    <root>/<split>/ir/<name>.<ext>        source 0 (any image format io.read_image reads)
    <root>/<split>/vi/<name>.<ext>        source 1 (more sources: name more folders, K >= 2)
    <root>/<split>/label/<name>.png       optional: segmentation masks (class indices, 255 = ignore)
    <root>/<split>/labels/<name>.txt      optional: YOLO boxes "class cx cy w h", normalised
    <list file>                           optional: "name x0,y0,x1,y1,cls ..." in pixels (released code)
    <root>/<split>/Annotations/<name>.xml optional: Pascal-VOC boxes

A folder name may contain ``{split}`` to place the split elsewhere (``infrared/{split}``, the LLVIP release; the
folder is then relative to ``root``), or start with ``{root}/`` to sit in ``root`` whatever the split;
``split=None`` reads ``<root>/<folder>`` directly. Images pair up by file stem. Class names come from
``class_names``, else a ``classes.txt`` in the label folder, the split folder or the root.

Faults are :class:`~tdfusion_core.data.labels.Problem` objects naming each file. The layout (missing partners,
missing labels) is checked when the dataset is built; file contents (unreadable images, size mismatches, bad
label values) when an item is loaded. Either raises :class:`~tdfusion_core.data.labels.DataError` unless
``skip_bad=True``, which logs each problem and skips the sample (a bad item is replaced by the next good one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from tdfusion_core.common.io import ImageReadError, NonFiniteImageError, list_images, read_image
from tdfusion_core.data import labels as L
from tdfusion_core.data.labels import DataError, Problem
from tdfusion_core.data.sample import Sample

logger = logging.getLogger("tdfusion.data")

#: largest class count inferred from label indices without an explicit count or class names (a larger index is
#: far more likely a typo than a real class)
MAX_INFERRED_CLASSES = 1000

#: label format -> target kind
TARGET_KINDS = {"mask": "mask", "yolo": "boxes", "annotations": "boxes", "voc": "boxes", "none": "none"}


class PairedDataset(Dataset[Sample]):
    """K registered sources per scene, read from folders, with optional masks or boxes.

    Args:
        root: dataset folder.
        split: split subfolder (``"train"``, ``"val"``, ``"test"``), or ``None`` when the source folders sit in
            ``root`` itself.
        sources: source folder names, source 0 first (default infrared then visible). K >= 2.
        labels: ``"auto"`` (masks if ``label/`` exists, else YOLO if ``labels/`` exists, else the annotation list
            if ``annotations`` is given, else VOC if ``Annotations/`` exists, else none), or one of
            ``"mask"``, ``"yolo"``, ``"annotations"``, ``"voc"``, ``"none"``.
        label_dir: label folder if not the format's default (``label``, ``labels``, ``Annotations``).
        annotations: the annotation list file (relative paths are relative to ``root``; may use ``{split}``).
        annotation_size: ``(H, W)`` of the images the list's pixel coordinates refer to (the released code writes
            them for images resized to e.g. 1024x1280 for LLVIP); default: each image's own size.
        class_names: names of the classes (sets ``num_classes``).
        num_classes: number of classes, if no names are known; labels are checked against it. Without either,
            YOLO labels give ``1 + the largest class index`` with a warning naming the file and line of that index,
            and a count above :data:`MAX_INFERRED_CLASSES` is refused as a likely typo.
        ignore_index: mask value that marks unlabelled pixels (never out of range).
        transform: ``Sample -> Sample`` applied to each loaded item.
        skip_bad: log and skip faulty samples instead of raising :class:`DataError`.
        allow_empty: accept box label files without boxes (an image with no objects) instead of reporting them.
        log_skipped: log each skipped problem (``skip_bad`` only).
        task_size: ``(H, W)`` the task loss resizes images to, if the dataset has a customary one (presets set the
            released code's); kept as :attr:`task_size` for the trainer.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = "train",
        sources: Sequence[str] = ("ir", "vi"),
        labels: str = "auto",
        label_dir: str | None = None,
        annotations: str | Path | None = None,
        annotation_size: Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
        num_classes: int | None = None,
        ignore_index: int = 255,
        transform: Callable[[Sample], Sample] | None = None,
        skip_bad: bool = False,
        allow_empty: bool = False,
        log_skipped: bool = True,
        task_size: Sequence[int] | None = None,
    ) -> None:
        self.root = Path(root)
        self.task_size: tuple[int, int] | None = (int(task_size[0]), int(task_size[1])) if task_size else None
        self.split = split
        if isinstance(sources, str):
            sources = [s.strip() for s in sources.split(",") if s.strip()]
        self.source_names = tuple(sources)
        if len(self.source_names) < 2:
            raise ValueError(f"a paired dataset needs at least 2 sources, got {list(self.source_names)}")
        if len(set(self.source_names)) != len(self.source_names):
            raise ValueError(f"source folders repeat: {list(self.source_names)}")
        self.transform = transform
        self.skip_bad = skip_bad
        self.allow_empty = allow_empty
        self.ignore_index = ignore_index
        self.log_skipped = log_skipped
        self.annotation_size: tuple[int, int] | None = (
            (int(annotation_size[0]), int(annotation_size[1])) if annotation_size is not None else None
        )
        self.source_dirs = tuple(self._resolve(s) for s in self.source_names)
        self.split_dir = self.root / split if split else self.root
        self.label_format, self.label_path = self._label_layout(labels, label_dir, annotations)
        self.target_kind: str = TARGET_KINDS[self.label_format]
        self.class_names, self.num_classes = self._classes(class_names, num_classes)
        if self.label_format == "voc" and not self.class_names:
            raise ValueError("VOC annotations name their classes: pass class_names (or use a preset)")
        #: problems found in the layout (with ``skip_bad``; otherwise they raised)
        self.problems: list[Problem] = []
        self.names: list[str] = []
        self._images: dict[str, tuple[Path, ...]] = {}
        self._labels: dict[str, Path | None] = {}
        self._annotation_lines: dict[str, tuple[int, str]] = {}
        self._bad: set[int] = set()
        self._scan()
        if self.num_classes is None and self.label_format == "yolo":
            largest = self._largest_yolo_class()
            if largest is not None:
                index, path, lineno = largest
                if index + 1 > MAX_INFERRED_CLASSES:
                    raise DataError(
                        [
                            Problem(
                                path,
                                "bad-label",
                                f"line {lineno}: class index {index} would make {index + 1} classes; a typo? Give "
                                f"the class count (--num-classes, num_classes=) or a classes.txt to use more than "
                                f"{MAX_INFERRED_CLASSES}",
                            )
                        ]
                    )
                self.num_classes = index + 1
                self.class_names = tuple(f"class_{i}" for i in range(self.num_classes))
                logger.warning(
                    "%s: no class names (classes.txt) or num_classes given; %d class(es) inferred from the largest "
                    "class index, %d, at %s line %d",
                    self.split_dir,
                    self.num_classes,
                    index,
                    path,
                    lineno,
                )

    # ------------------------------------------------------------------ layout
    def _resolve(self, spec: str | Path) -> Path:
        spec = str(spec)
        if spec.startswith("{root}/"):
            return self.root / spec[len("{root}/") :].format(split=self.split or "")
        if "{split}" in spec:
            return self.root / spec.format(split=self.split or "")
        return (self.root / self.split / spec) if self.split else self.root / spec

    def _label_layout(self, labels: str, label_dir: str | None, annotations: str | Path | None) -> tuple[str, Path]:
        if labels not in (*L.LABEL_FORMATS, "auto"):
            raise ValueError(f"unknown label format {labels!r}; choose from auto, {', '.join(L.LABEL_FORMATS)}")
        if labels == "auto":
            if annotations is not None:
                labels = "annotations"
            elif label_dir is not None:
                folder = self._resolve(label_dir)
                if any(folder.glob("*.txt")):
                    labels = "yolo"
                elif any(folder.glob("*.xml")):
                    labels = "voc"
                else:
                    labels = "mask"
            else:
                labels = "none"
                for fmt in ("mask", "yolo", "voc"):
                    if self._resolve(L.DEFAULT_LABEL_DIRS[fmt]).is_dir():
                        labels = fmt
                        break
        if labels == "none":
            return "none", self.split_dir
        if labels == "annotations":
            if annotations is None:
                raise ValueError("labels='annotations' needs the annotation list file: annotations=PATH")
            path = Path(str(annotations).format(split=self.split or ""))
            return "annotations", path if path.is_absolute() else self.root / path
        folder = self._resolve(label_dir or L.DEFAULT_LABEL_DIRS[labels])
        if not folder.is_dir():
            raise FileNotFoundError(f"label folder not found: {folder} (labels={labels!r})")
        return labels, folder

    def _classes(
        self, class_names: Sequence[str] | None, num_classes: int | None
    ) -> tuple[tuple[str, ...] | None, int | None]:
        names = tuple(class_names) if class_names is not None else None
        if names is None and self.label_format != "none":
            names = L.find_class_names(self.label_path if self.label_path.is_dir() else None, self.split_dir, self.root)
            if names is not None and num_classes is not None and len(names) != num_classes:
                names = None  # an explicit count wins over a stray classes.txt
        if names is not None:
            if num_classes is not None and num_classes != len(names):
                raise ValueError(f"num_classes={num_classes} but {len(names)} class names were given")
            return names, len(names)
        if num_classes is not None:
            return tuple(f"class_{i}" for i in range(num_classes)), num_classes
        return None, None

    def _largest_yolo_class(self) -> tuple[int, Path, int] | None:
        """The largest integer class index in the YOLO label files, with its file and line (``None`` if none)."""
        largest: tuple[int, Path, int] | None = None
        for path in self._labels.values():
            if path is None:
                continue
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError):
                continue  # reported by the reader when the sample is loaded
            for lineno, line in enumerate(lines, 1):
                first = line.split()[:1]
                if first and first[0].isdigit() and (largest is None or int(first[0]) > largest[0]):
                    largest = (int(first[0]), path, lineno)
        return largest

    def _infer_yolo_classes(self) -> int | None:
        """1 + the largest integer class index in the YOLO label files (``None`` if there is none)."""
        largest = self._largest_yolo_class()
        return largest[0] + 1 if largest is not None else None

    def _label_files(self) -> dict[str, Path]:
        suffix = {"yolo": ".txt", "voc": ".xml"}.get(self.label_format)
        if self.label_format == "mask":
            return list_images(self.label_path)
        found: dict[str, Path] = {}
        for p in sorted(self.label_path.iterdir()):
            if p.is_file() and p.suffix.lower() == suffix and p.name not in L.CLASS_FILES:
                found[p.stem] = p
        return found

    def _scan(self) -> None:
        listings = [list_images(d) for d in self.source_dirs]
        all_names = sorted(set().union(*listings))
        problems: list[Problem] = []
        complete: list[str] = []
        for name in all_names:
            missing = [d for d, files in zip(self.source_dirs, listings) if name not in files]
            if missing:
                present = next(files[name] for files in listings if name in files)
                problems.append(
                    Problem(present, "missing-partner", f"no partner named {name!r} in {', '.join(map(str, missing))}")
                )
                continue
            complete.append(name)
            self._images[name] = tuple(files[name] for files in listings)
        if self.label_format in ("mask", "yolo", "voc"):
            label_files = self._label_files()
            for name in complete:
                self._labels[name] = label_files.get(name)
                if name not in label_files and not (self.allow_empty and self.label_format != "mask"):
                    expected = self.label_path / (
                        name + {"mask": ".png", "yolo": ".txt", "voc": ".xml"}[self.label_format]
                    )
                    problems.append(Problem(self._images[name][0], "missing-label", f"no label file {expected}"))
            for name in sorted(set(label_files) - set(all_names)):
                problems.append(Problem(label_files[name], "missing-partner", "label file without images"))
        elif self.label_format == "annotations":
            entries, list_problems = L.parse_annotation_list(self.label_path)
            problems += list_problems
            self._annotation_lines = entries
            for name in complete:
                if name not in entries and not self.allow_empty:
                    problems.append(Problem(self._images[name][0], "missing-label", f"not listed in {self.label_path}"))
            for name in sorted(set(entries) - set(all_names)):
                problems.append(
                    Problem(self.label_path, "missing-partner", f"line {entries[name][0]}: no images named {name!r}")
                )
        bad_names = {self._name_of(p) for p in problems}
        self.names = [n for n in complete if n not in bad_names]
        if problems:
            if not self.skip_bad:
                raise DataError(problems)
            self.problems.extend(problems)
            if self.log_skipped:
                for p in problems:
                    logger.warning("skipping: %s", p)
        if not self.names and not self.skip_bad:
            raise ValueError(f"no image pairs found in {', '.join(map(str, self.source_dirs))}")

    def _name_of(self, problem: Problem) -> str | None:
        if problem.kind == "missing-label":
            return problem.path.stem
        return None

    # ------------------------------------------------------------------ items
    def __len__(self) -> int:
        return len(self.names)

    @property
    def paired_names(self) -> list[str]:
        """Names with every source present (including those skipped for a missing label)."""
        return list(self._images)

    def image_paths(self, name: str) -> tuple[Path, ...]:
        """Source files of sample ``name``, source 0 first."""
        return self._images[name]

    def label_file(self, name: str) -> Path | None:
        """Label file of sample ``name`` (the list file for ``annotations``), or ``None``."""
        if self.label_format == "annotations":
            return self.label_path
        return self._labels.get(name)

    def read(self, name: str) -> tuple[Sample | None, list[Problem]]:
        """Load sample ``name`` without transform: ``(sample, [])``, or ``(None, problems)`` naming each file."""
        problems: list[Problem] = []
        ys: list[torch.Tensor] = []
        chromas: list[torch.Tensor] = []
        size: tuple[int, int] | None = None
        first: Path | None = None
        for path in self._images[name]:
            try:
                y, c = read_image(path)
            except NonFiniteImageError as exc:
                problems.append(Problem(path, "non-finite", str(exc).replace(f"{path} ", "")))
                continue
            except ImageReadError as exc:
                problems.append(Problem(path, "unreadable", str(exc).replace(f" {path}", "")))
                continue
            hw = (int(y.shape[-2]), int(y.shape[-1]))
            if size is None:
                size, first = hw, path
            elif hw != size:
                problems.append(
                    Problem(path, "size-mismatch", f"{hw[0]}x{hw[1]} differs from {first} ({size[0]}x{size[1]})")
                )
                continue
            ys.append(y[0])
            chromas.append(c)
        target, label_problems = self._read_target(name, size)
        problems += label_problems
        if problems or size is None:
            return None, problems
        return Sample(torch.stack(ys), torch.stack(chromas), target, name), []

    def _read_target(self, name: str, size: tuple[int, int] | None) -> tuple[Any, list[Problem]]:
        fmt = self.label_format
        if fmt == "none":
            return None, []
        if fmt == "annotations":
            if name not in self._annotation_lines:
                return L.empty_boxes(), []
            lineno, text = self._annotation_lines[name]
            if size is None:
                return None, []
            return L.read_annotation_boxes(
                self.label_path, lineno, text, size, self.num_classes, self.annotation_size, self.allow_empty
            )
        path = self._labels.get(name)
        if path is None:
            return L.empty_boxes(), []
        if fmt == "mask":
            return L.read_mask(path, size, self.num_classes, self.ignore_index)
        if fmt == "yolo":
            return L.read_yolo(path, size or (1, 1), self.num_classes, self.allow_empty)
        return L.read_voc(path, size or (1, 1), self.class_names, self.allow_empty)

    def load(self, name: str) -> Sample:
        """Load sample ``name`` without transform; :class:`DataError` naming each faulty file."""
        sample, problems = self.read(name)
        if sample is None:
            raise DataError(problems)
        return sample

    def __getitem__(self, index: int) -> Sample:
        n = len(self.names)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        index %= n
        for attempt in range(n):
            i = (index + attempt) % n
            if i in self._bad:
                continue
            sample, problems = self.read(self.names[i])
            if sample is not None:
                return self.transform(sample) if self.transform is not None else sample
            if not self.skip_bad:
                raise DataError(problems)
            self._bad.add(i)
            if self.log_skipped:
                for p in problems:
                    logger.warning("skipping sample %r: %s", self.names[i], p)
        raise DataError([Problem(self.split_dir, "unreadable", "every sample of the dataset is faulty")])

    def check(self) -> list[Problem]:
        """Every problem of the dataset: the layout's and those of each sample's files (reads every file)."""
        found = list(self.problems)
        for name in self.names:
            found += self.read(name)[1]
        return found

    def __repr__(self) -> str:
        return (
            f"PairedDataset(root={str(self.root)!r}, split={self.split!r}, sources={list(self.source_names)}, "
            f"labels={self.label_format!r}, num_classes={self.num_classes}, samples={len(self)})"
        )
