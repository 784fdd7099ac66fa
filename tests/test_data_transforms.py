"""Joint transforms keep labels on the same pixels; Switch; collate; seeded loaders; disjoint meta splits."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tdfusion_core.data import targets as T
from tdfusion_core.data.sample import Batch, Sample
from tdfusion_core.data.synthetic import SyntheticScenes
from tdfusion_core.data.transforms import (
    CenterCrop,
    Compose,
    MetaSplitSampler,
    RandomCrop,
    RandomHorizontalFlip,
    Resize,
    Switch,
    collate_boxes,
    collate_masks,
    collate_targets_auto,
    crop,
    hflip,
    make_loader,
    meta_split,
    pad_to,
    random_context,
    resize,
    switch,
)
from tests.data_helpers import box_of, one_torch_thread, painted_sample  # noqa: F401

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def image_and_boxes(draw, max_boxes=4):
    """An image size and integer pixel boxes inside it (non-overlapping is not required)."""
    h = draw(st.integers(4, 40))
    w = draw(st.integers(4, 40))
    boxes = []
    for _ in range(draw(st.integers(0, max_boxes))):
        x0 = draw(st.integers(0, w - 1))
        x1 = draw(st.integers(x0 + 1, w))
        y0 = draw(st.integers(0, h - 1))
        y1 = draw(st.integers(y0 + 1, h))
        boxes.append([draw(st.integers(0, 5)), x0, y0, x1, y1])
    return (h, w), torch.tensor(boxes, dtype=torch.float32).reshape(-1, 5)


def _region(boxes_row, size):
    h, w = size
    r = torch.zeros(h, w, dtype=torch.bool)
    _, x0, y0, x1, y1 = (round(float(v)) for v in boxes_row)
    r[y0:y1, x0:x1] = True
    return r


# ---------------------------------------------------------------------------------------------------- property tests
@SETTINGS
@given(image_and_boxes(), st.data())
def test_crop_boxes_enclose_the_same_pixels(sized, data):
    (h, w), boxes = sized
    ch, cw = data.draw(st.integers(1, h)), data.draw(st.integers(1, w))
    top, left = data.draw(st.integers(0, h - ch)), data.draw(st.integers(0, w - cw))
    out = T.crop_boxes(boxes, top, left, ch, cw)
    kept = 0
    for row in boxes:
        original = _region(row, (h, w))[top : top + ch, left : left + cw]
        expected = box_of(original)
        if expected is None:
            continue  # the box leaves the window: it must have been dropped
        match = [r for r in out if tuple(int(v) for v in r[1:].tolist()) == expected and r[0] == row[0]]
        assert match, f"box {row.tolist()} cropped to {expected} missing from {out.tolist()}"
        kept += 1
    assert len(out) == kept  # nothing else survived
    assert bool(((out[:, 3] > out[:, 1]) & (out[:, 4] > out[:, 2])).all())


@SETTINGS
@given(image_and_boxes())
def test_hflip_boxes_mirror_the_pixels_and_twice_is_identity(sized):
    (h, w), boxes = sized
    out = T.hflip_boxes(boxes, w)
    for row, new in zip(boxes, out):
        assert torch.equal(_region(row, (h, w)).flip(-1), _region(new, (h, w)))
    assert torch.equal(T.hflip_boxes(out, w), boxes)


@SETTINGS
@given(image_and_boxes(), st.integers(1, 3), st.integers(1, 3))
def test_resize_boxes_by_integer_factors_enclose_the_nearest_resized_pixels(sized, fy, fx):
    (h, w), boxes = sized
    out = T.resize_boxes(boxes, (h, w), (h * fy, w * fx))
    assert len(out) == len(boxes)
    for row, new in zip(boxes, out):
        mask = _region(row, (h, w)).to(torch.uint8)
        up = T.resize_mask(mask, (h * fy, w * fx)).bool()
        assert box_of(up) == tuple(int(v) for v in new[1:].tolist())


@SETTINGS
@given(image_and_boxes(), st.integers(2, 60), st.integers(2, 60))
def test_resize_boxes_any_size_stay_inside_and_scale_back(sized, nh, nw):
    (h, w), boxes = sized
    out = T.resize_boxes(boxes, (h, w), (nh, nw))
    assert bool((out[:, 1::2] >= 0).all() and (out[:, 1::2] <= nw).all())
    assert bool((out[:, 2::2] >= 0).all() and (out[:, 2::2] <= nh).all())
    back = T.resize_boxes(out, (nh, nw), (h, w))
    assert torch.allclose(back, boxes, atol=1e-4)


@SETTINGS
@given(image_and_boxes())
def test_clip_boxes_never_returns_degenerate_or_outside_boxes(sized):
    (h, w), boxes = sized
    shifted = boxes.clone()
    shifted[:, 1::2] -= w / 2
    shifted[:, 2::2] += h / 3
    out = T.clip_boxes(shifted, h, w)
    assert bool((out[:, 3] > out[:, 1]).all() and (out[:, 4] > out[:, 2]).all())
    assert bool((out[:, 1::2] >= 0).all() and (out[:, 1::2] <= w).all() and (out[:, 2::2] <= h).all())


# ---------------------------------------------------------------------------------------------------- sample transforms
def _check_boxes_on_image(sample: Sample, tol: int = 0):
    """Each box encloses the painted pixels of its object (the painting is in source 0)."""
    img = sample.sources[0] > 0.5
    for row in sample.target:
        _, x0, y0, x1, y1 = (round(v) for v in row.tolist())
        inside = img[y0:y1, x0:x1]
        assert inside.float().mean() > 0.6, "box does not sit on its object"
        if tol == 0:
            assert bool(inside.all())


BOXES = torch.tensor([[0, 4, 6, 14, 20], [1, 30, 2, 38, 10], [2, 20, 25, 39, 31]], dtype=torch.float32)


def test_flip_crop_resize_keep_boxes_on_their_pixels():
    sample = painted_sample(BOXES, (32, 40))
    flipped = hflip(sample)
    assert torch.equal(flipped.sources[0], sample.sources[0].flip(-1))
    _check_boxes_on_image(flipped)
    assert box_of(flipped.sources[0] > 0.5) == box_of(sample.sources[0].flip(-1) > 0.5)
    cropped = crop(sample, 5, 3, 20, 30)
    _check_boxes_on_image(cropped)
    assert len(cropped.target) == 2 and torch.equal(cropped.target[0], torch.tensor([0.0, 1, 1, 11, 15]))
    small = crop(sample, 0, 0, 10, 16)  # only the first box, cut at the border
    assert small.target.tolist() == [[0.0, 4, 6, 14, 10]]
    big = resize(sample, (64, 100))
    _check_boxes_on_image(big, tol=1)
    for row in big.target:  # bilinear edges: the box and the >0.5 region agree within a pixel
        _, x0, y0, x1, y1 = (round(v) for v in row.tolist())
        region = torch.zeros_like(big.sources[0], dtype=torch.bool)
        region[max(y0 - 1, 0) : y1 + 1, max(x0 - 1, 0) : x1 + 1] = True
        inner = (big.sources[0] > 0.5) & region
        got = box_of(inner)
        assert got is not None and all(abs(a - b) <= 1 for a, b in zip(got, (x0, y0, x1, y1)))


def test_masks_resize_nearest_and_follow_flips_and_crops():
    mask = torch.randint(0, 4, (12, 16))
    mask[0, 0] = 255
    sample = Sample(torch.rand(2, 12, 16), torch.full((2, 2, 12, 16), 0.5), mask, "m")
    assert torch.equal(hflip(sample).target, mask.flip(-1))
    assert torch.equal(crop(sample, 2, 3, 5, 7).target, mask[2:7, 3:10])
    up = resize(sample, (24, 32)).target
    assert up.dtype == mask.dtype and torch.equal(up, mask.repeat_interleave(2, 0).repeat_interleave(2, 1))
    down = resize(sample, (7, 9)).target
    assert set(down.unique().tolist()) <= set(mask.unique().tolist())
    padded = pad_to(sample, 15, 20)
    assert (
        padded.size == (15, 20)
        and bool((padded.target[12:] == 255).all())
        and bool((padded.chroma[..., 12:, :] == 0.5).all())
    )


def test_dict_targets_and_a_task_as_target_ops():
    from tdfusion_core.tasks.tiny_seg import TinySegTask

    mask = torch.zeros(8, 10, dtype=torch.long)
    mask[2:5, 1:4] = 1
    boxes = torch.tensor([[0.0, 1, 2, 4, 5]])
    sample = Sample(torch.rand(2, 8, 10), torch.full((2, 2, 8, 10), 0.5), {"mask": mask, "boxes": boxes}, "d")
    out = hflip(sample)
    assert torch.equal(out.target["mask"], mask.flip(-1))
    assert out.target["boxes"].tolist() == [[0.0, 6, 2, 9, 5]]
    task = TinySegTask(num_classes=2)
    seg = Sample(sample.sources, sample.chroma, mask, "t")
    assert torch.equal(Resize((16, 20), target_ops=task)(seg).target, T.resize_mask(mask, (16, 20)))
    with pytest.raises(TypeError, match="target_ops"):
        hflip(Sample(sample.sources, sample.chroma, torch.rand(3, 3), "x"))


def test_random_transforms_are_reproducible_and_compose():
    sample = painted_sample(BOXES, (32, 40))
    pipeline = Compose([RandomCrop((16, 24)), RandomHorizontalFlip(0.5), Resize((32, 48))])
    outs = []
    for _ in range(2):
        with random_context(torch.Generator().manual_seed(7)):
            outs.append(pipeline(sample))
    assert torch.equal(outs[0].sources, outs[1].sources) and torch.equal(outs[0].target, outs[1].target)
    crops = {
        tuple(RandomCrop(8, generator=torch.Generator().manual_seed(s))(sample).sources[0].sum(1).tolist())
        for s in range(6)
    }
    assert len(crops) > 1  # different seeds, different windows
    with pytest.raises(ValueError, match="smaller than"):
        RandomCrop(64)(sample)
    assert RandomCrop(64, pad_if_needed=True)(sample).size == (64, 64)
    assert CenterCrop((10, 10))(sample).size == (10, 10)


def test_switch_reverses_sources_keeps_labels():
    sample = Sample(torch.rand(2, 5, 6), torch.rand(2, 2, 5, 6), torch.tensor([[0.0, 1, 1, 3, 3]]), "s")
    out = Switch(p=1.0)(sample)
    assert torch.equal(out.sources[0], sample.sources[1]) and torch.equal(out.sources[1], sample.sources[0])
    assert torch.equal(out.chroma[0], sample.chroma[1]) and out.target is sample.target
    assert Switch(p=0.0)(sample) is sample
    three = Sample(torch.rand(3, 4, 4), torch.rand(3, 2, 4, 4), None, "k3")
    assert torch.equal(switch(three, [2, 0, 1]).sources, three.sources[[2, 0, 1]])
    assert torch.equal(switch(three).sources, three.sources.flip(0))
    with pytest.raises(ValueError, match="permutation"):
        switch(three, [0, 0, 1])
    batch = Batch(sample.sources[None], sample.chroma[None], [sample.target], ["s"])
    assert torch.equal(batch.switched().sources[0], out.sources)
    # p=0.5: both orders occur over seeds
    seen = {
        bool(torch.equal(Switch(0.5, generator=torch.Generator().manual_seed(s))(sample).sources, sample.sources))
        for s in range(16)
    }
    assert seen == {True, False}


# ---------------------------------------------------------------------------------------------------- collate, loaders
def test_collate_masks_and_variable_boxes():
    masks = [torch.zeros(4, 5, dtype=torch.long), torch.ones(4, 5, dtype=torch.long)]
    assert collate_masks(masks).shape == (2, 4, 5)
    with pytest.raises(ValueError, match="different sizes"):
        collate_masks([masks[0], torch.zeros(3, 5, dtype=torch.long)])
    boxes = [torch.tensor([[0.0, 1, 1, 2, 2], [1.0, 0, 0, 3, 3]]), torch.zeros(0, 5), torch.tensor([[2.0, 1, 2, 3, 4]])]
    listed = collate_boxes(boxes)
    assert [len(b) for b in listed] == [2, 0, 1]
    flat = T.boxes_with_batch_index(listed)
    assert flat.shape == (3, 6) and flat[:, 0].tolist() == [0.0, 0.0, 2.0] and torch.equal(flat[2, 1:], boxes[2][0])
    auto = collate_targets_auto([{"mask": masks[0], "boxes": boxes[0]}, {"mask": masks[1], "boxes": boxes[1]}])
    assert auto["mask"].shape == (2, 4, 5) and isinstance(auto["boxes"], list)


def test_loader_batches_are_seeded_and_independent_of_workers():
    data = SyntheticScenes(6, size=(32, 48), seed=3, target="boxes")
    transform = Compose([RandomCrop((24, 32)), RandomHorizontalFlip(), Switch(0.5)])

    def epoch(workers, seed=1):
        loader = make_loader(data, batch_size=4, shuffle=True, transform=transform, num_workers=workers, seed=seed)
        return [b for b in loader]

    a, b = epoch(0), epoch(2)
    assert [x.names for x in a] == [x.names for x in b] and len(a) == 2 and len(a[1]) == 2
    for x, y in zip(a, b):
        assert isinstance(x, Batch) and x.sources.shape[1:] == (2, 24, 32)
        assert torch.equal(x.sources, y.sources) and all(torch.equal(p, q) for p, q in zip(x.targets, y.targets))
    c = epoch(0, seed=2)
    assert [x.names for x in c] != [x.names for x in a] or not torch.equal(c[0].sources, a[0].sources)
    loader = make_loader(data, 2, shuffle=False, seed=0, indices=[4, 1])
    names = [n for batch in loader for n in batch.names]
    assert names == [data.name(4), data.name(1)]
    first, second = (list(loader.sampler) for _ in range(2))
    assert [i for i, _ in first] == [0, 1] and first != second  # new per-sample seeds each epoch


def test_meta_split_is_disjoint_seeded_and_changes_per_epoch():
    n = 11
    tr, ts = meta_split(n, epoch=0, seed=5)
    assert len(tr) == 6 and len(ts) == 5 and not set(tr) & set(ts) and set(tr) | set(ts) == set(range(n))
    assert meta_split(n, 0, 5) == (tr, ts)
    assert meta_split(n, 1, 5) != (tr, ts) and meta_split(n, 0, 6) != (tr, ts)
    sampler = MetaSplitSampler(100, seed=1, meta_train_size=10, meta_test_size=20)
    for epoch in range(5):
        a, b = sampler.split(epoch)
        assert len(a) == 10 and len(b) == 20 and not set(a) & set(b) and max(a + b) < 100
    with pytest.raises(ValueError):
        MetaSplitSampler(10, meta_train_size=6, meta_test_size=5)
    with pytest.raises(ValueError):
        meta_split(1, 0)
