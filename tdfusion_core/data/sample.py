"""One registered multi-source sample and a batch of them: the unit every dataset yields and the trainer consumes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch


@attrs.define
class Sample:
    """K registered sources of one scene.

    Attributes:
        sources: ``(K, H, W)`` float luminance (Y of YCbCr) in [0, 1]; by convention source 0 is infrared and
            source 1 visible.
        chroma: ``(K, 2, H, W)`` Cb and Cr of each source in [0, 1]; 0.5 everywhere for a grayscale source.
        target: the task label (a mask, boxes, or anything a task plugin understands), or ``None``.
        name: file stem shared by the sources.
    """

    sources: torch.Tensor
    chroma: torch.Tensor
    target: Any = None
    name: str = ""

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the sources."""
        return (int(self.sources.shape[-2]), int(self.sources.shape[-1]))


@attrs.define
class Batch:
    """A collated batch: ``sources (B, K, H, W)``, ``chroma (B, K, 2, H, W)``, collated ``targets``, ``names``."""

    sources: torch.Tensor
    chroma: torch.Tensor
    targets: Any = None
    names: list[str] = attrs.field(factory=list)

    def to(self, device: torch.device | str) -> Batch:
        """Copy of the batch on ``device`` (targets too)."""
        from tdfusion_core.data.targets import to_device

        return Batch(self.sources.to(device), self.chroma.to(device), to_device(self.targets, device), self.names)

    def switched(self) -> Batch:
        """The same batch with the source order reversed (the paper's "Switch"); targets are unchanged."""
        return Batch(self.sources.flip(1), self.chroma.flip(1), self.targets, self.names)

    def __len__(self) -> int:
        return int(self.sources.shape[0])


def collate_samples(samples: Sequence[Sample], collate_targets: Callable[[list[Any]], Any] | None = None) -> Batch:
    """Stack samples of equal size into a :class:`Batch`; ``collate_targets`` combines the targets (default: list)."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    sizes = {s.size for s in samples}
    if len(sizes) > 1:
        raise ValueError(f"samples of different sizes cannot be batched: {sorted(sizes)}; resize or crop first")
    targets = [s.target for s in samples]
    has_targets = any(t is not None for t in targets)
    collated = (collate_targets or list)(targets) if has_targets else None
    return Batch(
        sources=torch.stack([s.sources for s in samples]),
        chroma=torch.stack([s.chroma for s in samples]),
        targets=collated,
        names=[s.name for s in samples],
    )
