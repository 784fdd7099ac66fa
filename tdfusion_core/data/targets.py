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


#: the one table of geometric target operations: operation -> target kind -> function(target, *arguments);
#: a kind without an entry (``"none"``) is left unchanged. Training needs only ``resize`` (the task sees the whole
#: image at the task size; the fusion loss's crops carry no targets).
OPERATIONS: dict[str, dict[str, Any]] = {
    "resize": {"mask": lambda m, size, new_size: resize_mask(m, new_size), "boxes": resize_boxes},
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
