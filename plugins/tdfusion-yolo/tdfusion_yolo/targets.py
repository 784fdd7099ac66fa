"""Conversion of core's pixel boxes to the batch dictionary that ultralytics' detection loss reads.

Core's box targets are, per image, a ``Tensor (N, 5)`` of rows ``class, x0, y0, x1, y1`` in pixels of the image as
given to the task (collated as a list). Ultralytics wants one flat batch: ``batch_idx (M,)``, ``cls (M, 1)`` and
``bboxes (M, 4)`` as centre-x, centre-y, width, height normalised to ``[0, 1]`` - x and width by the image WIDTH, y and
height by the image HEIGHT. (The released TDFusion detection loader divides x by the height; that is a bug for
non-square images and is not reproduced here.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def as_box_list(targets: Any, batch_size: int) -> list[torch.Tensor]:
    """Per-image ``(N, 5)`` float tensors from collated targets (a list / tuple, ``None`` entries meaning no box).

    A single ``(B, N, 5)`` tensor is accepted too (rows whose box has no area are ignored there: padding).
    """
    if targets is None:
        return [torch.zeros(0, 5) for _ in range(batch_size)]
    if isinstance(targets, torch.Tensor):
        if targets.dim() != 3 or targets.shape[-1] != 5:
            raise ValueError(f"box targets as one tensor must be (B, N, 5), got shape {tuple(targets.shape)}")
        rows = [t[(t[:, 3] > t[:, 1]) & (t[:, 4] > t[:, 2])] for t in targets]
    elif isinstance(targets, Sequence):
        rows = [torch.zeros(0, 5) if t is None else torch.as_tensor(t) for t in targets]
    else:
        raise TypeError(f"box targets must be a list of (N, 5) tensors, got {type(targets).__name__}")
    if len(rows) != batch_size:
        raise ValueError(f"got box targets for {len(rows)} images but the batch has {batch_size}")
    out = []
    for i, t in enumerate(rows):
        t = t.float().reshape(-1, t.shape[-1] if t.numel() else 5)
        if t.shape[-1] != 5:
            raise ValueError(
                f"box target of image {i} must have rows (class, x0, y0, x1, y1), got shape {tuple(t.shape)}"
            )
        out.append(t)
    return out


def to_ultralytics_batch(
    targets: Any, batch_size: int, height: int, width: int, num_classes: int | None = None, device: Any = None
) -> dict[str, torch.Tensor]:
    """The ``{"batch_idx", "cls", "bboxes"}`` dict of ultralytics for pixel boxes in images of ``height x width``.

    Raises ``ValueError`` for a class index outside ``[0, num_classes)`` (when given), which ultralytics would
    otherwise turn into an index error deep inside its assigner.
    """
    boxes = as_box_list(targets, batch_size)
    idx, cls, xywh = [], [], []
    for i, t in enumerate(boxes):
        t = t.to(device=device, dtype=torch.float32)
        if num_classes is not None and t.numel():
            bad = (t[:, 0] < 0) | (t[:, 0] >= num_classes) | (t[:, 0] != t[:, 0].round())
            if bad.any():
                raise ValueError(
                    f"image {i} has box class {t[bad, 0].tolist()} outside 0..{num_classes - 1} (num_classes)"
                )
        x0, y0, x1, y1 = t[:, 1], t[:, 2], t[:, 3], t[:, 4]
        xywh.append(
            torch.stack(((x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height), 1)
        )
        cls.append(t[:, :1])
        idx.append(torch.full((t.shape[0],), float(i), device=device))
    return {
        "batch_idx": torch.cat(idx) if idx else torch.zeros(0, device=device),
        "cls": torch.cat(cls) if cls else torch.zeros(0, 1, device=device),
        "bboxes": torch.cat(xywh) if xywh else torch.zeros(0, 4, device=device),
    }
