"""Pure PyTorch / torchvision stand-in for ``mmcv._ext``, the compiled extension that ``mmcv-lite`` lacks.

Every module of ``mmcv.ops`` runs ``ext_loader.load_ext('_ext', [names])`` at import time and asserts that the
extension has each name, so ``import mmseg`` / ``import mmdet`` fail without it. :class:`FallbackExtModule` has
every name: the ops listed in :data:`FALLBACK_OPS` are implemented here (same signatures and in-place output
conventions as mmcv's C++/CUDA functions, so mmcv's own ``autograd.Function`` wrappers work unchanged); any other
name resolves to a stub that raises :class:`MissingCompiledOpError` naming the op, the ``mmcv.ops`` module that
wraps it and the models that need it, when it is *called* (not when it is imported).

Backward passes of the ops without a torchvision kernel are computed by re-running the differentiable forward
under autograd (they are small elementwise or gather ops), so they are exact.
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as nnf

#: mmcv.ops module stem -> the kinds of model that use it (for the error message of a missing op)
MODELS_BY_OPS_MODULE: dict[str, str] = {
    "deform_conv": "Deformable ConvNets (backbones with `dcn=dict(type='DCN')`, e.g. mmdet `dcn/` configs, "
    "RepPoints heads)",
    "modulated_deform_conv": "DCNv2 (backbones or heads with `dcn=dict(type='DCNv2')`, e.g. mmdet `dcnv2/`, "
    "`dyhead/`, CenterNet-update, TOOD's DCN variants)",
    "deform_roi_pool": "Deformable RoI pooling (mmdet `DeformRoIPoolPack` / `ModulatedDeformRoIPoolPack` heads)",
    "carafe": "CARAFE upsampling (mmdet `carafe/` configs, mmseg UPerNet / FPN with CARAFE)",
    "psa_mask": "PSANet (mmseg `psanet/`)",
    "masked_conv": "Guided Anchoring (mmdet `guided_anchoring/` GA-RPN / GA-RetinaNet)",
    "sync_bn": "norm layers of type 'MMSyncBN' (use 'BN' or 'SyncBN' instead)",
    "nms": "rotated / quadrilateral or matched NMS (mmrotate models, PISA's `nms_match`)",
    "roi_align": "RoIAlign with pool_mode='max' (the default 'avg' mode has a fallback)",
    "roi_align_rotated": "rotated RoI heads (mmrotate, mmdet rotated configs)",
    "riroi_align_rotated": "ReDet (mmrotate)",
    "box_iou_rotated": "rotated-box detectors and losses (mmrotate)",
    "box_iou_quadri": "quadrilateral-box detectors (mmrotate)",
    "border_align": "BorderDet heads",
    "prroi_pool": "Precise RoI pooling (IoU-Net style heads)",
    "focal_loss": "softmax focal loss (`SoftmaxFocalLoss`); the sigmoid focal loss has a fallback",
    "correlation": "optical-flow models with a correlation layer (mmflow)",
    "tin_shift": "TIN (mmaction2)",
    "upfirdn2d": "StyleGAN2 / StyleGAN3 generators (mmagic)",
    "fused_bias_leakyrelu": "StyleGAN2 generators (mmagic)",
    "filtered_lrelu": "StyleGAN3 generators (mmagic)",
    "bias_act": "StyleGAN3 generators (mmagic)",
    "pixel_group": "PAN text detection (mmocr)",
    "contour_expand": "PSENet text detection (mmocr)",
    "bezier_align": "ABCNet text spotting (mmocr)",
    "active_rotated_filter": "oriented response networks (ORN) in rotated detection (mmrotate)",
    "rotated_feature_align": "R3Det / S2A-Net (mmrotate)",
    "convex_iou": "oriented RepPoints (mmrotate)",
    "min_area_polygons": "oriented RepPoints (mmrotate)",
    "points_in_polygons": "oriented RepPoints (mmrotate)",
    "diff_iou_rotated": "rotated IoU losses (mmrotate)",
    "chamfer_distance": "point-cloud models (mmdet3d)",
    "assign_score_withk": "PAConv (mmdet3d)",
}
#: generic description for the point-cloud ops of mmcv
POINT_CLOUD_MODELS = "3D point-cloud detectors and segmentors (mmdet3d: PointNet++, VoteNet, PointPillars, ...)"


class MissingCompiledOpError(NotImplementedError):
    """A compiled mmcv op was called, mmcv's extension is not installed, and there is no fallback for it."""


@cache
def _ops_module_of(name: str) -> str | None:
    """Stem of the ``mmcv.ops`` module whose ``load_ext`` call lists ``name`` (found by reading mmcv's sources)."""
    try:
        import mmcv.ops as mmcv_ops_pkg

        folder = Path(mmcv_ops_pkg.__path__[0])
    except Exception:
        import importlib.util

        spec = importlib.util.find_spec("mmcv")
        if spec is None or not spec.submodule_search_locations:
            return None
        folder = Path(next(iter(spec.submodule_search_locations))) / "ops"
    pattern = re.compile(r"load_ext\(\s*'_ext',\s*\[(.*?)\]", re.S)
    for path in sorted(folder.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        for match in pattern.finditer(text):
            if f"'{name}'" in match.group(1):
                return path.stem
    return None


def missing_op_message(name: str, detail: str = "") -> str:
    """The error text for a compiled op ``name`` that has no fallback."""
    module = _ops_module_of(name)
    where = f" (wrapped by mmcv.ops.{module})" if module else ""
    models = MODELS_BY_OPS_MODULE.get(module or "", POINT_CLOUD_MODELS if module else "models that use this op")
    extra = f" {detail}" if detail else ""
    return (
        f"mmcv compiled op '{name}'{where} is not available.{extra} mmcv's compiled extension (mmcv._ext) is not "
        "installed (mmcv-lite), and tdfusion-mmcv-compat has no pure-PyTorch fallback for this op. "
        f"Models that need it: {models}. Fallbacks exist for: {', '.join(sorted(SUPPORTED_OPS))}. "
        "Use a model without this op, or install a compiled mmcv (see the tdfusion-mmseg / tdfusion-mmdet README, "
        "'Route A: compiled mmcv')."
    )


def _missing(name: str) -> Callable[..., Any]:
    def stub(*args: Any, **kwargs: Any) -> Any:
        raise MissingCompiledOpError(missing_op_message(name))

    stub.__name__ = name
    stub.__qualname__ = f"missing_op.{name}"
    stub.__doc__ = f"Placeholder for mmcv's compiled op {name!r}: raises MissingCompiledOpError when called."
    stub.tdfusion_missing_op = True  # type: ignore[attr-defined]
    return stub


# ---------------------------------------------------------------------------------------------------- NMS
def _pairwise_iou(box: torch.Tensor, boxes: torch.Tensor, offset: int) -> torch.Tensor:
    """IoU of one box ``(4,)`` with ``boxes (N, 4)``; widths are ``x1 - x0 + offset`` as in mmcv."""
    area = (box[2] - box[0] + offset) * (box[3] - box[1] + offset)
    areas = (boxes[:, 2] - boxes[:, 0] + offset) * (boxes[:, 3] - boxes[:, 1] + offset)
    w = (torch.minimum(box[2], boxes[:, 2]) - torch.maximum(box[0], boxes[:, 0]) + offset).clamp(min=0)
    h = (torch.minimum(box[3], boxes[:, 3]) - torch.maximum(box[1], boxes[:, 1]) + offset).clamp(min=0)
    inter = w * h
    return inter / (area + areas - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: int = 0) -> torch.Tensor:
    """Indices of the boxes kept by greedy NMS, by decreasing score (``torchvision.ops.nms``).

    ``offset=1`` (legacy pixel convention, width ``x1 - x0 + 1``) is handled by widening the boxes by one pixel,
    which gives exactly mmcv's areas and intersections.
    """
    import torchvision

    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    if offset:
        boxes = boxes.clone()
        boxes[:, 2:] += offset
    return torchvision.ops.nms(boxes.float(), scores.float(), float(iou_threshold))


def softnms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    dets: torch.Tensor,
    iou_threshold: float,
    sigma: float,
    min_score: float,
    method: int,
    offset: int,
) -> torch.Tensor:
    """Soft-NMS as mmcv's CPU kernel: fills ``dets (N, 5)`` in selection order, returns the kept original indices.

    ``method``: 0 naive (drop overlaps above the threshold), 1 linear (``1 - iou`` above the threshold),
    2 gaussian (``exp(-iou² / sigma)``). Boxes whose score falls below ``min_score`` are discarded.
    """
    boxes = boxes.clone()
    scores = scores.clone()
    order = torch.arange(boxes.shape[0], dtype=torch.long)
    n = boxes.shape[0]
    i = 0
    while i < n:
        pos = i + int(torch.argmax(scores[i:n]))
        for t in (boxes, scores, order):
            t[[i, pos]] = t[[pos, i]]
        if i + 1 < n:
            iou = _pairwise_iou(boxes[i], boxes[i + 1 : n], offset)
            if method == 1:
                weight = torch.where(iou >= iou_threshold, 1 - iou, torch.ones_like(iou))
            elif method == 2:
                weight = torch.exp(-(iou * iou) / sigma)
            else:
                weight = torch.where(iou >= iou_threshold, torch.zeros_like(iou), torch.ones_like(iou))
            scores[i + 1 : n] *= weight
            keep = torch.cat([torch.arange(i + 1), i + 1 + torch.nonzero(scores[i + 1 : n] >= min_score).flatten()])
            n = keep.numel()
            boxes[:n], scores[:n], order[:n] = boxes[keep], scores[keep], order[keep]
        i += 1
    dets[:n, :4] = boxes[:n]
    dets[:n, 4] = scores[:n]
    return order[:n]


# ---------------------------------------------------------------------------------------------------- box overlaps
def bbox_overlaps(
    bboxes1: torch.Tensor,
    bboxes2: torch.Tensor,
    ious: torch.Tensor,
    mode: int = 0,
    aligned: bool = False,
    offset: int = 0,
) -> None:
    """IoU (``mode=0``) or IoF (``mode=1``, over the area of ``bboxes1``) written into ``ious``."""
    if aligned:
        lt = torch.maximum(bboxes1[:, :2], bboxes2[:, :2])
        rb = torch.minimum(bboxes1[:, 2:], bboxes2[:, 2:])
    else:
        lt = torch.maximum(bboxes1[:, None, :2], bboxes2[None, :, :2])
        rb = torch.minimum(bboxes1[:, None, 2:], bboxes2[None, :, 2:])
    wh = (rb - lt + offset).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area1 = (bboxes1[:, 2] - bboxes1[:, 0] + offset) * (bboxes1[:, 3] - bboxes1[:, 1] + offset)
    area2 = (bboxes2[:, 2] - bboxes2[:, 0] + offset) * (bboxes2[:, 3] - bboxes2[:, 1] + offset)
    if not aligned:
        area1, area2 = area1[:, None], area2[None, :]
    union = area1 + area2 - inter if mode == 0 else area1.expand_as(inter)
    ious.copy_(inter / union.clamp(min=torch.finfo(inter.dtype).eps))


# ---------------------------------------------------------------------------------------------------- RoI ops
def _average_pool_only(op: str, pool_mode: int) -> None:
    """RoIAlign's fallbacks average (``pool_mode`` 1); max pooling (0) has none and raises naming ``op``."""
    if pool_mode == 0:
        raise MissingCompiledOpError(
            missing_op_message(op, "RoIAlign with pool_mode='max' has no fallback; 'avg' does.")
        )


# The two RoIAlign functions take mmcv's C++ argument lists as they are (mmcv's autograd.Function calls them
# positionally), so their long signatures repeat each other by design.
def roi_align_forward(
    input: torch.Tensor,
    rois: torch.Tensor,
    output: torch.Tensor,
    argmax_y: torch.Tensor,
    argmax_x: torch.Tensor,
    aligned_height: int,
    aligned_width: int,
    spatial_scale: float,
    sampling_ratio: int,
    pool_mode: int,
    aligned: bool,
) -> None:
    """RoIAlign (average mode) through ``torchvision.ops.roi_align``, which uses the same sampling grid as mmcv."""
    _average_pool_only("roi_align_forward", pool_mode)
    out = torch.ops.torchvision.roi_align(
        input, rois, float(spatial_scale), int(aligned_height), int(aligned_width), int(sampling_ratio), bool(aligned)
    )
    output.copy_(out)


def roi_align_backward(
    grad_output: torch.Tensor,
    rois: torch.Tensor,
    argmax_y: torch.Tensor,
    argmax_x: torch.Tensor,
    grad_input: torch.Tensor,
    aligned_height: int,
    aligned_width: int,
    spatial_scale: float,
    sampling_ratio: int,
    pool_mode: int,
    aligned: bool,
) -> None:
    """Gradient of :func:`roi_align_forward` with respect to the feature map (torchvision's backward kernel)."""
    _average_pool_only("roi_align_backward", pool_mode)
    b, c, h, w = grad_input.shape
    grad = torch.ops.torchvision._roi_align_backward(
        grad_output,
        rois,
        float(spatial_scale),
        int(aligned_height),
        int(aligned_width),
        b,
        c,
        h,
        w,
        int(sampling_ratio),
        bool(aligned),
    )
    grad_input.copy_(grad)


def roi_pool_forward(
    input: torch.Tensor,
    rois: torch.Tensor,
    output: torch.Tensor,
    argmax: torch.Tensor,
    pooled_height: int,
    pooled_width: int,
    spatial_scale: float,
) -> None:
    """RoI max pooling through ``torchvision.ops.roi_pool`` (same rounding of RoI corners as mmcv)."""
    out, arg = torch.ops.torchvision.roi_pool(input, rois, float(spatial_scale), int(pooled_height), int(pooled_width))
    output.copy_(out)
    argmax.copy_(arg)


def roi_pool_backward(
    grad_output: torch.Tensor,
    rois: torch.Tensor,
    argmax: torch.Tensor,
    grad_input: torch.Tensor,
    pooled_height: int,
    pooled_width: int,
    spatial_scale: float,
) -> None:
    """Gradient of :func:`roi_pool_forward`: each output's gradient goes to the input cell that was the maximum."""
    b, c, h, w = grad_input.shape
    grad = torch.ops.torchvision._roi_pool_backward(
        grad_output.contiguous(),
        rois,
        argmax.int(),
        float(spatial_scale),
        int(pooled_height),
        int(pooled_width),
        b,
        c,
        h,
        w,
    )
    grad_input.copy_(grad)


# ---------------------------------------------------------------------------------------------------- focal loss
def _sigmoid_focal_elementwise(
    input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, gamma: float, alpha: float
) -> torch.Tensor:
    """Per-element sigmoid focal loss ``(N, C)``; ``target`` in ``[0, C]`` where ``C`` means background."""
    num_classes = input.shape[1]
    onehot = nnf.one_hot(target.clamp(max=num_classes), num_classes + 1)[:, :num_classes].to(input.dtype)
    p = input.sigmoid()
    pos = -alpha * (1 - p).pow(gamma) * nnf.logsigmoid(input)
    neg = -(1 - alpha) * p.pow(gamma) * nnf.logsigmoid(-input)
    loss = onehot * pos + (1 - onehot) * neg
    if weight.numel():
        # mmcv scales each sample by the weight of its target class; background samples (target == C) keep 1
        per_sample = torch.where(target < num_classes, weight[target.clamp(max=num_classes - 1)], weight.new_ones(()))
        loss = loss * per_sample[:, None].to(loss.dtype)
    return loss


def sigmoid_focal_loss_forward(
    input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, output: torch.Tensor, gamma: float, alpha: float
) -> None:
    """mmcv's sigmoid focal loss, element by element, written into ``output (N, C)``."""
    with torch.no_grad():
        output.copy_(_sigmoid_focal_elementwise(input, target, weight, gamma, alpha))


def sigmoid_focal_loss_backward(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    grad_input: torch.Tensor,
    gamma: float,
    alpha: float,
) -> None:
    """Elementwise derivative of :func:`sigmoid_focal_loss_forward` with respect to ``input``."""
    with torch.enable_grad():
        x = input.detach().requires_grad_(True)
        loss = _sigmoid_focal_elementwise(x, target, weight, gamma, alpha)
        (grad,) = torch.autograd.grad(loss.sum(), x)
    grad_input.copy_(grad)


# ---------------------------------------------------------------------------------------------------- deformable attention
def ms_deform_attn_forward(
    value: torch.Tensor,
    value_spatial_shapes: torch.Tensor,
    value_level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    im2col_step: int = 64,
) -> torch.Tensor:
    """Multi-scale deformable attention through mmcv's own pure-PyTorch implementation (grid_sample)."""
    from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch

    return multi_scale_deformable_attn_pytorch(value, value_spatial_shapes, sampling_locations, attention_weights)


def ms_deform_attn_backward(
    value: torch.Tensor,
    value_spatial_shapes: torch.Tensor,
    value_level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    grad_output: torch.Tensor,
    grad_value: torch.Tensor,
    grad_sampling_loc: torch.Tensor,
    grad_attn_weight: torch.Tensor,
    im2col_step: int = 64,
) -> None:
    """Gradients of :func:`ms_deform_attn_forward`, by autograd through the pure-PyTorch forward."""
    from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch

    with torch.enable_grad():
        inputs = [t.detach().requires_grad_(True) for t in (value, sampling_locations, attention_weights)]
        out = multi_scale_deformable_attn_pytorch(inputs[0], value_spatial_shapes, inputs[1], inputs[2])
        grads = torch.autograd.grad(out, inputs, grad_output)
    for dst, src in zip((grad_value, grad_sampling_loc, grad_attn_weight), grads):
        dst.copy_(src)


# ---------------------------------------------------------------------------------------------------- build info
def get_compiler_version() -> str:
    """What mmcv reports as the extension's compiler (used by environment reports)."""
    return "none (tdfusion-mmcv-compat pure-PyTorch fallback)"


def get_compiling_cuda_version() -> str:
    """What mmcv reports as the extension's CUDA version (used by environment reports)."""
    return "not compiled"


#: name -> fallback implementation (the compiled ops these plugins' models use)
FALLBACK_OPS: dict[str, Callable[..., Any]] = {
    fn.__name__: fn
    for fn in (
        nms,
        softnms,
        bbox_overlaps,
        roi_align_forward,
        roi_align_backward,
        roi_pool_forward,
        roi_pool_backward,
        sigmoid_focal_loss_forward,
        sigmoid_focal_loss_backward,
        ms_deform_attn_forward,
        ms_deform_attn_backward,
        get_compiler_version,
        get_compiling_cuda_version,
    )
}


#: the compiled ops with a fallback (without the build-information helpers)
SUPPORTED_OPS: tuple[str, ...] = tuple(name for name in FALLBACK_OPS if not name.startswith("get_"))


class FallbackExtModule(types.ModuleType):
    """Module object installed as ``mmcv._ext``: fallbacks by name, a raising stub for every other public name."""

    def __init__(self, name: str = "mmcv._ext") -> None:
        super().__init__(name, __doc__)
        for op_name, fn in FALLBACK_OPS.items():
            setattr(self, op_name, fn)
        self.tdfusion_fallback = True

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        stub = _missing(name)
        setattr(self, name, stub)
        return stub
