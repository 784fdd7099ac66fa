"""The pure-PyTorch stand-ins for mmcv's compiled ops, checked against independent reference implementations.

The ops are called through mmcv's own Python wrappers (``mmcv.ops.nms``, ``RoIAlign``, ...) with their extension
module pointed at the fallback, so the tests exercise the fallback whichever mmcv route is installed.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import pytest
import tdfusion_mmcv_compat
import torch
from tdfusion_mmcv_compat.ext import FallbackExtModule, MissingCompiledOpError, missing_op_message

OPS_MODULES = ("nms", "roi_align", "roi_pool", "focal_loss", "bbox", "multi_scale_deform_attn", "deform_conv")


@pytest.fixture
def fallback(mmcv_ops: Any, monkeypatch: pytest.MonkeyPatch) -> FallbackExtModule:
    """Point the ``ext_module`` of the tested ``mmcv.ops`` modules at a fresh fallback module."""
    ext = FallbackExtModule()
    for name in OPS_MODULES:
        monkeypatch.setattr(sys.modules[f"mmcv.ops.{name}"], "ext_module", ext)
    return ext


def random_boxes(n: int, generator: torch.Generator, size: float = 50.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * size
    wh = torch.rand(n, 2, generator=generator) * size / 2 + 1
    return torch.cat([xy, xy + wh], 1)


def reference_iou(a: torch.Tensor, b: torch.Tensor, offset: int = 0) -> float:
    w = max(0.0, float(min(a[2], b[2]) - max(a[0], b[0])) + offset)
    h = max(0.0, float(min(a[3], b[3]) - max(a[1], b[1])) + offset)
    area_a = float(a[2] - a[0] + offset) * float(a[3] - a[1] + offset)
    area_b = float(b[2] - b[0] + offset) * float(b[3] - b[1] + offset)
    return w * h / (area_a + area_b - w * h)


def reference_nms(boxes: torch.Tensor, scores: torch.Tensor, thr: float, offset: int = 0) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep: list[int] = []
    for i in order:
        if all(reference_iou(boxes[i], boxes[k], offset) <= thr for k in keep):
            keep.append(i)
    return keep


# ------------------------------------------------------------------------------------------------ installation
def test_install_serves_the_installed_route(mmcv_ops: Any) -> None:
    ext = sys.modules["mmcv._ext"]
    expected = "compiled" if tdfusion_mmcv_compat._real_ext_exists() else "fallback"
    assert tdfusion_mmcv_compat.backend() == expected
    assert isinstance(ext, FallbackExtModule) == (expected == "fallback")
    assert tdfusion_mmcv_compat.install() == expected  # idempotent
    finders = [f for f in sys.meta_path if isinstance(f, tdfusion_mmcv_compat.FallbackExtFinder)]
    assert len(finders) == 1
    assert sys.meta_path[-1] is finders[0] or tdfusion_mmcv_compat.os.environ.get("TDFUSION_MMCV_FALLBACK") == "force"


def test_install_without_mmcv_names_both_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tdfusion_mmcv_compat, "_mmcv_installed", lambda: False)
    with pytest.raises(tdfusion_mmcv_compat.MmcvNotInstalledError, match=r"mmcv-lite.*no-build-isolation"):
        tdfusion_mmcv_compat.install()


# ------------------------------------------------------------------------------------------------ NMS family
@pytest.mark.parametrize("offset", [0, 1])
def test_nms_matches_greedy_reference(fallback: FallbackExtModule, mmcv_ops: Any, offset: int) -> None:
    g = torch.Generator().manual_seed(1)
    boxes = random_boxes(60, g)
    scores = torch.randperm(60, generator=g).float() / 60 + 0.01
    dets, keep = mmcv_ops.nms(boxes, scores, iou_threshold=0.3, offset=offset)
    assert keep.tolist() == reference_nms(boxes, scores, 0.3, offset)
    assert torch.equal(dets[:, 4], scores[keep])
    assert 0 < len(keep) < 60


def test_batched_nms_never_suppresses_across_classes(fallback: FallbackExtModule, mmcv_ops: Any) -> None:
    g = torch.Generator().manual_seed(2)
    boxes = random_boxes(40, g)
    scores = torch.randperm(40, generator=g).float() / 40 + 0.01
    labels = torch.randint(0, 3, (40,), generator=g)
    dets, keep = mmcv_ops.batched_nms(boxes, scores, labels, {"type": "nms", "iou_threshold": 0.4})
    expected = []
    for c in range(3):
        idx = torch.nonzero(labels == c).flatten()
        expected += [int(idx[i]) for i in reference_nms(boxes[idx], scores[idx], 0.4)]
    assert sorted(keep.tolist()) == sorted(expected)
    assert torch.all(dets[:-1, 4] >= dets[1:, 4])  # sorted by score


def reference_soft_nms(
    boxes: torch.Tensor, scores: torch.Tensor, thr: float, sigma: float, min_score: float, method: int
):
    """A literal transcription of mmcv's softnms_cpu loop (swap-with-last removal)."""
    b = [list(map(float, row)) for row in boxes]
    s = [float(x) for x in scores]
    inds = list(range(len(s)))
    n = len(s)
    dets = []
    i = 0
    while i < n:
        m = max(range(i, n), key=lambda k: (s[k], -k))
        m = next(k for k in range(i, n) if s[k] == s[m])
        b[i], b[m], s[i], s[m], inds[i], inds[m] = b[m], b[i], s[m], s[i], inds[m], inds[i]
        dets.append((inds[i], s[i]))
        pos = i + 1
        while pos < n:
            ovr = reference_iou(torch.tensor(b[i]), torch.tensor(b[pos]))
            if method == 0:
                weight = 0.0 if ovr >= thr else 1.0
            elif method == 1:
                weight = 1 - ovr if ovr >= thr else 1.0
            else:
                weight = math.exp(-(ovr * ovr) / sigma)
            s[pos] *= weight
            if s[pos] < min_score:
                b[pos], s[pos], inds[pos] = b[n - 1], s[n - 1], inds[n - 1]
                n -= 1
                pos -= 1
            pos += 1
        i += 1
    return dict(dets)


@pytest.mark.parametrize("method", ["naive", "linear", "gaussian"])
def test_soft_nms_matches_mmcv_algorithm(fallback: FallbackExtModule, mmcv_ops: Any, method: str) -> None:
    g = torch.Generator().manual_seed(3)
    boxes = random_boxes(30, g, size=20.0)
    scores = torch.rand(30, generator=g) * 0.9 + 0.05
    dets, inds = mmcv_ops.soft_nms(boxes, scores, iou_threshold=0.3, sigma=0.5, min_score=0.05, method=method)
    expected = reference_soft_nms(boxes, scores, 0.3, 0.5, 0.05, {"naive": 0, "linear": 1, "gaussian": 2}[method])
    assert set(inds.tolist()) == set(expected)
    for ind, score in zip(inds.tolist(), dets[:, 4].tolist()):
        assert score == pytest.approx(expected[ind], rel=1e-5)
    assert torch.equal(dets[:, :4], boxes[inds])


@pytest.mark.parametrize("mode", ["iou", "iof"])
@pytest.mark.parametrize("aligned", [False, True])
def test_bbox_overlaps_matches_mmdet(fallback: FallbackExtModule, mmcv_ops: Any, mode: str, aligned: bool) -> None:
    from mmdet.structures.bbox import bbox_overlaps as mmdet_overlaps  # pure PyTorch, independent

    g = torch.Generator().manual_seed(4)
    a, b = random_boxes(7, g), random_boxes(7 if aligned else 5, g)
    got = mmcv_ops.bbox_overlaps(a, b, mode=mode, aligned=aligned)
    torch.testing.assert_close(got, mmdet_overlaps(a, b, mode=mode, is_aligned=aligned), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ RoI ops
def bilinear(feat: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """mmcv's bilinear_interpolate: zero outside [-1, H] x [-1, W], edges clamped."""
    c, h, w = feat.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return torch.zeros(c, dtype=feat.dtype)
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return (
        (1 - ly) * (1 - lx) * feat[:, y0, x0]
        + (1 - ly) * lx * feat[:, y0, x1]
        + ly * (1 - lx) * feat[:, y1, x0]
        + ly * lx * feat[:, y1, x1]
    )


def reference_roi_align(feat, rois, out_size, scale, sampling_ratio, aligned):
    ph_n, pw_n = out_size
    out = torch.zeros(len(rois), feat.shape[1], ph_n, pw_n, dtype=feat.dtype)
    for r, roi in enumerate(rois.tolist()):
        b, x1, y1, x2, y2 = roi
        off = 0.5 if aligned else 0.0
        sx, sy, ex, ey = x1 * scale - off, y1 * scale - off, x2 * scale - off, y2 * scale - off
        rw, rh = ex - sx, ey - sy
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / ph_n, rw / pw_n
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / ph_n)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / pw_n)
        for ph in range(ph_n):
            for pw in range(pw_n):
                acc = torch.zeros(feat.shape[1], dtype=feat.dtype)
                for iy in range(gh):
                    for ix in range(gw):
                        y = sy + ph * bh + (iy + 0.5) * bh / gh
                        x = sx + pw * bw + (ix + 0.5) * bw / gw
                        acc += bilinear(feat[int(b)], y, x)
                out[r, :, ph, pw] = acc / max(gh * gw, 1)
    return out


@pytest.mark.parametrize("aligned,sampling_ratio", [(True, 2), (True, 0), (False, 0)])
def test_roi_align_matches_reference(
    fallback: FallbackExtModule, mmcv_ops: Any, aligned: bool, sampling_ratio: int
) -> None:
    g = torch.Generator().manual_seed(5)
    feat = torch.rand(2, 3, 9, 11, generator=g, dtype=torch.float64)
    rois = torch.tensor(
        [[0, 1.0, 2.0, 15.0, 12.0], [1, -3.0, 0.5, 8.0, 20.0], [1, 10.0, 8.0, 30.0, 19.0], [0, 4.0, 4.0, 4.5, 4.2]],
        dtype=torch.float64,
    )
    layer = mmcv_ops.RoIAlign((3, 2), spatial_scale=0.5, sampling_ratio=sampling_ratio, aligned=aligned)
    torch.testing.assert_close(layer(feat, rois), reference_roi_align(feat, rois, (3, 2), 0.5, sampling_ratio, aligned))


def test_roi_align_and_roi_pool_gradients(fallback: FallbackExtModule, mmcv_ops: Any) -> None:
    g = torch.Generator().manual_seed(6)
    feat = torch.rand(1, 2, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 1.2, 0.7, 9.1, 8.3], [0, 3.3, 2.1, 12.0, 11.0]], dtype=torch.float64)
    align = mmcv_ops.RoIAlign((2, 2), spatial_scale=0.5, sampling_ratio=2, aligned=True)
    assert torch.autograd.gradcheck(lambda f: align(f, rois), (feat,))
    pool = mmcv_ops.RoIPool((2, 2), spatial_scale=0.5)
    out = pool(feat, rois)
    (grad,) = torch.autograd.grad(out.sum(), feat)
    # max pooling: every output routes its gradient to exactly one input cell holding that output's value
    assert grad.sum() == out.numel()
    assert torch.all(torch.isin(out.detach().flatten(), feat.detach().flatten()))
    assert torch.autograd.gradcheck(lambda f: pool(f, rois), (feat,))


def test_roi_align_max_mode_has_a_clear_error(fallback: FallbackExtModule, mmcv_ops: Any) -> None:
    layer = mmcv_ops.RoIAlign((2, 2), spatial_scale=1.0, pool_mode="max")
    with pytest.raises(MissingCompiledOpError, match=r"roi_align_forward.*pool_mode='max'"):
        layer(torch.rand(1, 1, 4, 4), torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]]))


# ------------------------------------------------------------------------------------------------ losses and attention
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_sigmoid_focal_loss_matches_mmdet_python_version(
    fallback: FallbackExtModule, mmcv_ops: Any, reduction: str
) -> None:
    from mmdet.models.losses.focal_loss import py_sigmoid_focal_loss  # pure PyTorch, independent

    g = torch.Generator().manual_seed(7)
    logits = (torch.randn(12, 4, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    labels = torch.randint(0, 5, (12,), generator=g)  # 4 = background
    got = mmcv_ops.sigmoid_focal_loss(logits, labels, 2.0, 0.25, None, reduction)
    onehot = torch.nn.functional.one_hot(labels, 5)[:, :4].to(logits.dtype)
    ref_logits = logits.detach().clone().requires_grad_(True)
    want = py_sigmoid_focal_loss(ref_logits, onehot, gamma=2.0, alpha=0.25, reduction=reduction)
    if reduction == "mean":  # mmcv divides by the number of samples, mmdet's python version by the element count
        want = want * 4
    torch.testing.assert_close(got, want)
    (g1,) = torch.autograd.grad(got.sum(), logits)
    (g2,) = torch.autograd.grad(want.sum(), ref_logits)
    torch.testing.assert_close(g1, g2)


def test_ms_deform_attn_fallback_matches_pytorch_path(fallback: FallbackExtModule, mmcv_ops: Any) -> None:
    from mmcv.ops.multi_scale_deform_attn import MultiScaleDeformableAttnFunction, multi_scale_deformable_attn_pytorch

    g = torch.Generator().manual_seed(8)
    shapes = torch.tensor([[4, 5], [2, 3]])
    start = torch.tensor([0, 20])
    value = torch.rand(1, 26, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    loc = torch.rand(1, 5, 2, 2, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    attn = torch.rand(1, 5, 2, 2, 3, generator=g, dtype=torch.float64).softmax(-1).requires_grad_(True)
    out = MultiScaleDeformableAttnFunction.apply(value, shapes, start, loc, attn, 64)
    ref = multi_scale_deformable_attn_pytorch(value, shapes, loc, attn)
    torch.testing.assert_close(out, ref)
    weights = torch.rand(out.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((out * weights).sum(), (value, loc, attn))
    ref_grads = torch.autograd.grad((ref * weights).sum(), (value, loc, attn))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------------ missing ops
def test_unsupported_op_raises_naming_op_and_models(fallback: FallbackExtModule, mmcv_ops: Any) -> None:
    assert hasattr(fallback, "deform_conv_forward")  # so that mmcv.ops imports
    layer = mmcv_ops.DeformConv2d(2, 2, kernel_size=3, padding=1)
    x = torch.rand(1, 2, 5, 5)
    offset = torch.zeros(1, 18, 5, 5)
    with pytest.raises(MissingCompiledOpError) as info:
        layer(x, offset)
    message = str(info.value)
    assert "'deform_conv_forward'" in message
    assert "mmcv.ops.deform_conv" in message
    assert "Deformable ConvNets" in message and "dcn" in message
    assert "nms" in message and "roi_align_forward" in message  # lists what does have a fallback
    assert "compiled mmcv" in message


def test_missing_op_message_for_point_cloud_and_unknown_ops() -> None:
    assert "mmdet3d" in missing_op_message("ball_query_forward")
    assert "mmcv.ops.ball_query" in missing_op_message("ball_query_forward")
    assert "'not_an_op'" in missing_op_message("not_an_op")
    with pytest.raises(AttributeError):
        _ = FallbackExtModule().__wrapped__  # private names are not stubbed (keeps inspect / pickle sane)
