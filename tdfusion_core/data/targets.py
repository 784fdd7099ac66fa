"""Geometric operations on task targets, kept consistent with the same operation on the image.

Two target kinds are known to core:

* masks: ``LongTensor (H, W)`` of class indices (255 = ignore); resized with nearest neighbour;
* boxes: ``Tensor (N, 5)`` rows ``class, x0, y0, x1, y1`` in pixels of the image they belong to; clipped to the
  image after each operation and dropped when their width or height is no longer positive.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as nnf

TargetKind = Literal["mask", "boxes", "none"]


def infer_target_kind(target: Any) -> TargetKind:
    """Guess a target's kind: an integer/bool tensor of ``ndim >= 2`` is a mask, a float ``(N, 5)`` tensor boxes.

    ``None`` is ``"none"``; anything else raises ``TypeError`` (pass the task, which knows its targets).
    """
    if target is None:
        return "none"
    if isinstance(target, torch.Tensor):
        if target.is_floating_point() and target.ndim == 2 and target.shape[-1] == 5:
            return "boxes"
        if not target.is_floating_point() and not target.is_complex() and target.ndim >= 2:
            return "mask"
    raise TypeError(
        f"cannot tell how to transform a target of type {type(target).__name__}"
        + (f" with shape {tuple(target.shape)} and dtype {target.dtype}" if isinstance(target, torch.Tensor) else "")
        + "; masks are integer tensors (H, W), boxes float tensors (N, 5). Pass target_ops=<your Task>."
    )


def pad_mask(mask: torch.Tensor, height: int, width: int, value: int = 255) -> torch.Tensor:
    """Pad a mask ``(..., H, W)`` at the bottom and right to ``(height, width)`` with ``value`` (ignore)."""
    h, w = mask.shape[-2:]
    if (h, w) == (height, width):
        return mask
    out = torch.full((*mask.shape[:-2], height, width), value, dtype=mask.dtype)
    out[..., :h, :w] = mask
    return out


def resize_mask(mask: torch.Tensor, new_size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of a class-index mask ``(H, W)`` to ``new_size`` ``(H', W')``."""
    if tuple(mask.shape[-2:]) == tuple(new_size):
        return mask
    resized = nnf.interpolate(mask[None, None].float(), size=new_size, mode="nearest-exact")
    return resized[0, 0].to(mask.dtype)


def clip_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Clip boxes to ``[0, width] x [0, height]`` and drop those of non-positive width or height."""
    if boxes.numel() == 0:
        return boxes.reshape(0, 5)
    out = boxes.clone()
    out[:, 1::2] = out[:, 1::2].clamp(0, width)
    out[:, 2::2] = out[:, 2::2].clamp(0, height)
    keep = (out[:, 3] > out[:, 1]) & (out[:, 4] > out[:, 2])
    return out[keep]


def resize_boxes(boxes: torch.Tensor, size: tuple[int, int], new_size: tuple[int, int]) -> torch.Tensor:
    """Scale pixel boxes from an image of ``size`` ``(H, W)`` to one of ``new_size``."""
    (h, w), (nh, nw) = size, new_size
    out = boxes.clone().float()
    out[:, 1::2] *= nw / w
    out[:, 2::2] *= nh / h
    return clip_boxes(out, nh, nw)


def crop_boxes(boxes: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """Shift pixel boxes into the crop window and clip them to it."""
    out = boxes.clone().float()
    out[:, 1::2] -= left
    out[:, 2::2] -= top
    return clip_boxes(out, height, width)


def hflip_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """Mirror pixel boxes horizontally in an image ``width`` pixels wide."""
    out = boxes.clone().float()
    out[:, 1], out[:, 3] = width - boxes[:, 3], width - boxes[:, 1]
    return out


def crop_mask(mask: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """The window ``[top:top+height, left:left+width]`` of a mask ``(..., H, W)``."""
    return mask[..., top : top + height, left : left + width]


def hflip_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    """Mirror a mask ``(..., H, W)`` horizontally."""
    return mask.flip(-1)


#: the one table of geometric target operations: operation -> target kind -> function(target, *arguments);
#: a kind without an entry (``"none"``, boxes under ``pad``) is left unchanged
OPERATIONS: dict[str, dict[str, Any]] = {
    "resize": {"mask": lambda m, size, new_size: resize_mask(m, new_size), "boxes": resize_boxes},
    "crop": {"mask": crop_mask, "boxes": crop_boxes},
    "hflip": {"mask": hflip_mask, "boxes": hflip_boxes},
    "pad": {"mask": pad_mask},
}


def apply(operation: str, kind: str, target: Any, *args: Any) -> Any:
    """``OPERATIONS[operation][kind](target, *args)``, or ``target`` unchanged where the table has no entry."""
    function = OPERATIONS[operation].get(kind)
    return function(target, *args) if function is not None and target is not None else target


def boxes_with_batch_index(boxes: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-image boxes ``(N_i, 5)`` into ``(sum N_i, 6)`` rows ``image index, class, x0, y0, x1, y1``.

    The flat form most detection losses take (the released code's ``yolo_dataset_collate``, in pixels here).
    """
    rows = [torch.cat([torch.full((len(b), 1), float(i)), b.float().reshape(-1, 5)], 1) for i, b in enumerate(boxes)]
    return torch.cat(rows) if rows else torch.zeros(0, 6)


def to_device(targets: Any, device: torch.device | str) -> Any:
    """Move a tensor, or a list / tuple / dict of them, to ``device``."""
    if isinstance(targets, torch.Tensor):
        return targets.to(device)
    if isinstance(targets, (list, tuple)):
        return type(targets)(to_device(t, device) for t in targets)
    if isinstance(targets, dict):
        return {k: to_device(v, device) for k, v in targets.items()}
    return targets
