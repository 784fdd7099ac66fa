"""Target operations keep labels on the same pixels: resized boxes and masks, clipped boxes, box batches."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tdfusion_core.data import targets as T
from tests.data_helpers import box_of, one_torch_thread  # noqa: F401

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


def test_masks_resize_nearest_and_keep_their_classes():
    mask = torch.randint(0, 4, (12, 16), generator=torch.Generator().manual_seed(0))
    mask[0, 0] = 255
    up = T.resize_mask(mask, (24, 32))
    assert up.dtype == mask.dtype and torch.equal(up, mask.repeat_interleave(2, 0).repeat_interleave(2, 1))
    down = T.resize_mask(mask, (7, 9))
    assert down.shape == (7, 9) and set(down.unique().tolist()) <= set(mask.unique().tolist())
    assert T.resize_mask(mask, (12, 16)) is mask


def test_box_lists_flatten_with_their_image_index():
    boxes = [torch.tensor([[0.0, 1, 1, 2, 2], [1.0, 0, 0, 3, 3]]), torch.zeros(0, 5), torch.tensor([[2.0, 1, 2, 3, 4]])]
    flat = T.boxes_with_batch_index(boxes)
    assert flat.shape == (3, 6) and flat[:, 0].tolist() == [0.0, 0.0, 2.0] and torch.equal(flat[2, 1:], boxes[2][0])
    assert T.boxes_with_batch_index([]).shape == (0, 6)
