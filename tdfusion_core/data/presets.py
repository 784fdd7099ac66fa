"""Presets for the public datasets TDFusion is evaluated on: class lists, folder layouts and task sizes.

Each preset knows three layouts:

* ``"default"``: the folder layout of this project and of TDFusion's released code for segmentation,
  ``<root>/<split>/{ir,vi}`` plus ``label/`` masks (MSRS, FMB) or ``labels/`` YOLO boxes (M3FD, LLVIP);
* ``"tdfusion"``: exactly what the released code reads (segmentation as ``default``; detection from
  ``<root>/{ir,vi}`` without split folders and a list file ``../<NAME>_<split>.txt`` of pixel boxes in the resized
  image size);
* ``"published"``: the layout of the dataset's own release (MSRS ``Segmentation_labels``; FMB
  ``Infrared``/``Visible``/``Label``; M3FD ``Ir``/``Vis``/``Annotation`` VOC XML without splits; LLVIP
  ``infrared/<split>``, ``visible/<split>``, ``Annotations`` VOC XML).

``task_size`` is the ``(H, W)`` the released code resizes whole images to for the task loss; ``input_kind`` is what
its task networks take (``"luminance"``: the one-channel fused Y, SegFormer ``in_chans=1`` and YOLOv8's one-channel
stem). A preset's dataset carries it as ``input_kind``, and the trainer passes it to a task that takes an
``input_kind`` option, unless the run's ``task_options`` set one (``"rgb"`` is an extension of this project).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from tdfusion_core.data.paired import PairedDataset


@attrs.frozen
class Layout:
    """Where a dataset keeps its sources and labels (folder names may use ``{split}``; see PairedDataset)."""

    sources: tuple[str, ...]
    labels: str
    label_dir: str | None = None
    annotations: str | None = None
    annotation_size: tuple[int, int] | None = None
    #: False when the release has no split folders (the ``split`` argument then only names the list file)
    split_folders: bool = True


@attrs.frozen
class DatasetPreset:
    """A public dataset: classes, label kind, task size and known layouts."""

    name: str
    class_names: tuple[str, ...]
    target_kind: str
    task_size: tuple[int, int]
    layouts: Mapping[str, Layout]
    splits: tuple[str, ...]
    description: str
    #: what the released code feeds the task network on this dataset
    input_kind: str = "luminance"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def dataset(
        self, root: str | Path | None = None, split: str = "train", layout: str = "default", **options: Any
    ) -> PairedDataset:
        """A :class:`PairedDataset` over ``root`` in ``layout``; ``options`` override the preset's arguments."""
        if root is None:
            raise ValueError(
                f"dataset {self.name!r} needs its folder: root=PATH (layouts: {', '.join(self.layouts)}). "
                f"{self.description}"
            )
        if layout not in self.layouts:
            raise ValueError(f"unknown layout {layout!r} for {self.name}; choose from {', '.join(self.layouts)}")
        lay = self.layouts[layout]
        kwargs: dict[str, Any] = {
            "split": split if lay.split_folders else None,
            "sources": lay.sources,
            "labels": lay.labels,
            "label_dir": lay.label_dir,
            "class_names": self.class_names,
            "task_size": self.task_size,
        }
        if lay.annotations is not None:
            kwargs["annotations"] = lay.annotations.format(split=split)
            kwargs["annotation_size"] = lay.annotation_size
        if "num_classes" in options and "class_names" not in options:
            kwargs.pop("class_names")
        kwargs.update(options)
        dataset = PairedDataset(root, **kwargs)
        dataset.input_kind = self.input_kind  # type: ignore[attr-defined]
        return dataset


def _seg_layouts(published: Layout) -> dict[str, Layout]:
    default = Layout(sources=("ir", "vi"), labels="mask", label_dir="label")
    return {"default": default, "tdfusion": default, "published": published}


def _det_layouts(name: str, annotation_size: tuple[int, int], published: Layout) -> dict[str, Layout]:
    return {
        "default": Layout(sources=("ir", "vi"), labels="yolo", label_dir="labels"),
        "tdfusion": Layout(
            sources=("ir", "vi"),
            labels="annotations",
            annotations=f"../{name}_{{split}}.txt",
            annotation_size=annotation_size,
            split_folders=False,
        ),
        "published": published,
    }


# One entry per dataset, written out: each class list is that dataset's own label table (alike only in shape).
PRESETS: dict[str, DatasetPreset] = {
    "msrs": DatasetPreset(
        name="msrs",
        class_names=(
            "unlabelled",
            "car",
            "person",
            "bike",
            "curve",
            "car_stop",
            "guardrail",
            "color_cone",
            "bump",
        ),
        target_kind="mask",
        task_size=(240, 320),
        layouts=_seg_layouts(
            Layout(sources=("ir", "vi"), labels="mask", label_dir="Segmentation_labels"),
        ),
        splits=("train", "test"),
        description="MSRS (Tang et al., PIAFusion 2022; github Linfeng-Tang/MSRS): 640x480 road scenes, 9-class masks.",
    ),
    "fmb": DatasetPreset(
        name="fmb",
        class_names=(
            "unlabeled",
            "road",
            "sidewalk",
            "building",
            "traffic lamp",
            "traffic sign",
            "vegetation",
            "sky",
            "person",
            "car",
            "truck",
            "bus",
            "motorcycle",
            "bicycle",
            "pole",
        ),
        target_kind="mask",
        task_size=(300, 400),
        layouts=_seg_layouts(
            Layout(sources=("Infrared", "Visible"), labels="mask", label_dir="Label"),
        ),
        splits=("train", "test"),
        description="FMB (Liu et al., SegMiF, ICCV 2023): 800x600 scenes, 15-class masks (14 + unlabeled).",
    ),
    "m3fd": DatasetPreset(
        name="m3fd",
        class_names=("people", "car", "bus", "motorcycle", "lamp", "truck"),
        target_kind="boxes",
        task_size=(192, 256),
        layouts=_det_layouts(
            "M3FD",
            (768, 1024),
            Layout(sources=("Ir", "Vis"), labels="voc", label_dir="Annotation", split_folders=False),
        ),
        splits=("train", "val", "test"),
        description="M3FD (Liu et al., TarDAL, CVPR 2022): 1024x768 scenes, boxes of 6 classes.",
    ),
    "llvip": DatasetPreset(
        name="llvip",
        class_names=("person",),
        target_kind="boxes",
        task_size=(256, 320),
        layouts=_det_layouts(
            "LLVIP",
            (1024, 1280),
            Layout(sources=("infrared/{split}", "visible/{split}"), labels="voc", label_dir="{root}/Annotations"),
        ),
        splits=("train", "test"),
        description="LLVIP (Jia et al., ICCVW 2021): 1280x1024 night street scenes, pedestrian boxes.",
    ),
}


def get_preset(name: str) -> DatasetPreset:
    """The preset called ``name`` (case-insensitive); an unknown name lists the known ones."""
    key = name.lower()
    if key not in PRESETS:
        raise KeyError(f"unknown dataset preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[key]


def preset_dataset(
    name: str, root: str | Path | None = None, split: str = "train", layout: str = "default", **options: Any
) -> PairedDataset:
    """Build the :class:`PairedDataset` of preset ``name`` (see :meth:`DatasetPreset.dataset`)."""
    return get_preset(name).dataset(root, split=split, layout=layout, **options)


def preset_names() -> Sequence[str]:
    """Names of the presets."""
    return tuple(PRESETS)
