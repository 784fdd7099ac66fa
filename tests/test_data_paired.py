"""PairedDataset on real shared sets and tiny folders; presets; the registered datasets."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from tdfusion_core.common.io import read_image
from tdfusion_core.data.labels import DataError
from tdfusion_core.data.paired import PairedDataset
from tdfusion_core.data.presets import PRESETS, get_preset, preset_dataset
from tdfusion_core.data.sampling import ShardedBatches, StepSampler
from tdfusion_core.plugin.registry import available, get_dataset
from tdfusion_core.tasks.tiny_seg import TinySegTask
from tdfusion_core.training.batches import Batcher, resize_images
from tests.conftest import shared_path
from tests.data_helpers import copy_real, make_folder, one_torch_thread  # noqa: F401


def _batcher(target_kind: str, task_size: tuple[int, int], batch_size: int, num_workers: int = 0) -> Batcher:
    """The training path's batcher (no Switch) for a task of ``target_kind``."""
    task = TinySegTask(num_classes=3)
    task.target_kind = target_kind  # type: ignore[misc]
    task.full_resolution_targets = False  # targets resized with the images, as a detection task has them
    sampler = StepSampler(batch_size, shards=ShardedBatches(batch_size, switch=False))
    return Batcher(task, task_size, None, False, sampler=sampler, num_workers=num_workers)


def test_llvip_real_pairs_with_yolo_boxes_through_the_training_path():
    root = shared_path("data", "LLVIP")
    data = preset_dataset("llvip", root, split="val")
    assert len(data) == 10 and data.target_kind == "boxes" and data.class_names == ("person",)
    assert data.task_size == (256, 320)  # the released code's LLVIP task size, read by the trainer
    sample = data[0]
    assert sample.sources.shape == (2, 512, 640) and sample.chroma.shape == (2, 2, 512, 640)
    assert bool((sample.chroma[0] == 0.5).all()) and float((sample.chroma[1] - 0.5).abs().max()) > 0.05
    y_vi, _ = read_image(root / "val" / "vi" / f"{sample.name}.png")
    assert torch.equal(sample.sources[1], y_vi[0])
    assert sample.target.shape[1] == 5 and len(sample.target) >= 1
    # the whole val split read by 2 worker processes, as training reads it: targets follow the task-size images
    (_, batch), *rest = list(_batcher("boxes", get_preset("llvip").task_size, 10, num_workers=2).fusion_phase(data, 0))
    assert not rest and batch.sources.shape == (10, 2, 256, 320) and isinstance(batch.targets, list)
    row = [torch.equal(batch.sources[j], resize_images(sample.sources[None], (256, 320))[0]) for j in range(10)]
    assert sum(row) == 1  # sample 0 is in the batch once
    scaled = batch.targets[row.index(True)]
    assert torch.allclose(scaled[:, 1::2], sample.target[:, 1::2] / 2) and torch.allclose(
        scaled[:, 2::2], sample.target[:, 2::2] / 2
    )


def test_msrs_det_real_boxes_x_by_width_y_by_height():
    data = PairedDataset(
        shared_path("data", "MSRS_det"), "train", labels="yolo", class_names=["person", "bicycle", "car"]
    )
    assert len(data) == 15 and data.num_classes == 3
    name = "00004N"
    target = data.load(name).target
    rows = np.loadtxt(shared_path("data", "MSRS_det", "train", "labels", f"{name}.txt"), ndmin=2)
    assert torch.allclose(
        target[:, 1], torch.tensor((rows[:, 1] - rows[:, 3] / 2) * 640, dtype=torch.float32), atol=1e-3
    )
    assert torch.allclose(
        target[:, 4], torch.tensor((rows[:, 2] + rows[:, 4] / 2) * 480, dtype=torch.float32), atol=1e-3
    )


@pytest.mark.parametrize("dataset", ["RoadScene", "TNO"])
def test_unlabelled_real_sets(dataset):
    data = get_dataset("folder", root=str(shared_path("data", dataset)))
    assert data.target_kind == "none" and data.num_classes is None and len(data) >= 15
    sample = data[0]
    assert sample.target is None and sample.sources.shape[0] == 2
    if dataset == "TNO":  # grayscale visible: neutral chroma
        assert bool((sample.chroma == 0.5).all())
    _, batch = next(iter(_batcher("none", (64, 80), 2).fusion_phase(data, 0)))
    assert batch.targets is None and batch.sources.shape == (2, 2, 64, 80)


def test_three_sources_masks_and_classes(tmp_path):
    root = make_folder(tmp_path, names=("a", "b"), sources=("ir", "vi", "nir"), mask_classes=4)
    (root / "train" / "label" / "classes.txt").write_text("bg\nx\ny\nz\n")
    data = PairedDataset(root, "train", sources="ir,vi,nir")
    assert data.target_kind == "mask" and data.class_names == ("bg", "x", "y", "z") and data.num_classes == 4
    s = data[1]
    assert s.sources.shape == (3, 24, 32) and s.target.shape == (24, 32) and s.target.dtype == torch.int64
    assert bool((s.chroma[0] == 0.5).all()) and bool((s.chroma[2] == 0.5).all())
    expected = np.asarray(Image.open(root / "train" / "label" / "b.png"))
    assert np.array_equal(s.target.numpy(), expected)
    _, batch = next(iter(_batcher("mask", (24, 32), 2).fusion_phase(data, 0)))
    assert batch.targets.shape == (2, 24, 32) and batch.sources.shape == (2, 3, 24, 32)
    with pytest.raises(ValueError, match="at least 2"):
        PairedDataset(root, "train", sources=("ir",))
    with pytest.raises(ValueError, match="num_classes=3"):
        PairedDataset(root, "train", class_names=["a", "b"], num_classes=3)
    with pytest.raises(FileNotFoundError, match="depth"):
        PairedDataset(root, "train", sources=("ir", "depth"))


def test_missing_partner_raises_naming_the_file_or_is_skipped(tmp_path, caplog):
    root = make_folder(tmp_path, names=("a", "b", "c"))
    (root / "train" / "vi" / "b.png").unlink()
    with pytest.raises(DataError, match=r"ir/b\.png") as info:
        PairedDataset(root)
    assert [p.kind for p in info.value.problems] == ["missing-partner"]
    with caplog.at_level(logging.WARNING, logger="tdfusion.data"):
        data = PairedDataset(root, skip_bad=True)
    assert data.names == ["a", "c"] and "b.png" in caplog.text


def test_bad_items_raise_or_are_replaced_by_the_next_good_one(tmp_path, caplog):
    root = make_folder(tmp_path, names=("a", "b", "c"))
    bad = root / "train" / "ir" / "b.png"
    bad.write_bytes(bad.read_bytes()[:40])
    strict = PairedDataset(root)
    assert strict[0].name == "a"
    with pytest.raises(DataError, match=r"ir/b\.png"):
        strict[1]
    with caplog.at_level(logging.WARNING, logger="tdfusion.data"):
        lenient = PairedDataset(root, skip_bad=True)
        assert lenient[1].name == "c"
    assert "b.png" in caplog.text and len(lenient.check()) == 1


def test_split_placeholder_and_no_split(tmp_path):
    make_folder(tmp_path / "flat", names=("x",), split="")
    assert PairedDataset(tmp_path / "flat", split=None).names == ["x"]
    for s in ("infrared", "visible"):
        (tmp_path / "pub" / s / "train").mkdir(parents=True)
    make_folder(tmp_path / "tmp", names=("p", "q"))
    for name in ("p", "q"):
        (tmp_path / "tmp" / "train" / "ir" / f"{name}.png").rename(
            tmp_path / "pub" / "infrared" / "train" / f"{name}.png"
        )
        (tmp_path / "tmp" / "train" / "vi" / f"{name}.png").rename(
            tmp_path / "pub" / "visible" / "train" / f"{name}.png"
        )
    data = PairedDataset(tmp_path / "pub", "train", sources=("infrared/{split}", "visible/{split}"))
    assert data.names == ["p", "q"]


def test_presets_class_lists_sizes_and_layouts():
    assert {k: (v.num_classes, v.task_size, v.target_kind) for k, v in PRESETS.items()} == {
        "msrs": (9, (240, 320), "mask"),
        "fmb": (15, (300, 400), "mask"),
        "m3fd": (6, (192, 256), "boxes"),
        "llvip": (1, (256, 320), "boxes"),
    }
    assert PRESETS["msrs"].class_names[:3] == ("unlabelled", "car", "person")
    assert PRESETS["fmb"].class_names[-1] == "pole" and PRESETS["m3fd"].class_names[0] == "people"
    for p in PRESETS.values():
        assert set(p.layouts) == {"default", "tdfusion", "published"}
    with pytest.raises(ValueError, match="root"):
        preset_dataset("msrs")
    with pytest.raises(KeyError, match="presets"):
        get_preset("kaist")


def test_msrs_published_layout_with_masks(tmp_path):
    make_folder(tmp_path, names=("00001D", "00002N"), mask_classes=9)
    (tmp_path / "train" / "label").rename(tmp_path / "train" / "Segmentation_labels")
    data = preset_dataset("msrs", tmp_path, layout="published")
    assert data.num_classes == 9 and data.target_kind == "mask" and data[0].target.max() < 9
    with pytest.raises(FileNotFoundError, match="label"):
        preset_dataset("msrs", tmp_path)  # default layout expects label/


def test_llvip_published_voc_and_tdfusion_list_layouts(tmp_path):
    """The same real pair read through LLVIP's three layouts gives the same boxes."""
    name = "010003"
    default = preset_dataset("llvip", copy_real("LLVIP", [name], tmp_path / "default"))
    ref = default.load(name).target
    # published: infrared/<split>/, visible/<split>/, Annotations/*.xml in 1280x1024 pixels
    pub = tmp_path / "pub"
    for src, dst in (("ir", "infrared"), ("vi", "visible")):
        (pub / dst / "train").mkdir(parents=True)
        (pub / dst / "train" / f"{name}.png").write_bytes(
            (tmp_path / "default" / "train" / src / f"{name}.png").read_bytes()
        )
    (pub / "Annotations").mkdir()
    objs = "".join(
        f"<object><name>person</name><bndbox><xmin>{x0 * 2:.2f}</xmin><ymin>{y0 * 2:.2f}</ymin>"
        f"<xmax>{x1 * 2:.2f}</xmax><ymax>{y1 * 2:.2f}</ymax></bndbox></object>"
        for _, x0, y0, x1, y1 in ref.tolist()
    )
    (pub / "Annotations" / f"{name}.xml").write_text(
        f"<annotation><size><width>1280</width><height>1024</height></size>{objs}</annotation>"
    )
    voc = preset_dataset("llvip", pub, layout="published")
    assert torch.allclose(voc.load(name).target, ref, atol=0.01)
    # tdfusion: <root>/{ir,vi} without split folders and ../LLVIP_train.txt in 1280x1024 pixels
    rel = tmp_path / "tdf" / "LLVIP"
    for src in ("ir", "vi"):
        (rel / src).mkdir(parents=True)
        (rel / src / f"{name}.png").write_bytes((tmp_path / "default" / "train" / src / f"{name}.png").read_bytes())
    boxes = " ".join(
        f"{x0 * 2:.0f},{y0 * 2:.0f},{x1 * 2:.0f},{y1 * 2:.0f},{int(c)}" for c, x0, y0, x1, y1 in ref.tolist()
    )
    (tmp_path / "tdf" / "LLVIP_train.txt").write_text(f"{name}.png {boxes}\n")
    listed = preset_dataset("llvip", rel, layout="tdfusion")
    assert torch.allclose(listed.load(name).target, ref, atol=0.51)


def test_registered_datasets():
    names = available("dataset")
    assert {"folder", "synthetic", "msrs", "fmb", "m3fd", "llvip"} <= set(names)
    synth = get_dataset("synthetic", n=3, size=(32, 48), target="boxes")
    assert len(synth) == 3 and synth.target_kind == "boxes"
    assert not torch.equal(get_dataset("synthetic", n=1, split="val", size=(32, 48))[0].sources, synth[0].sources)
    with pytest.raises(ValueError, match="root"):
        get_dataset("folder")
    llvip = get_dataset("llvip", root=str(shared_path("data", "LLVIP")), split="val")
    assert len(llvip) == 10
