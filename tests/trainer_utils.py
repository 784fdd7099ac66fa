"""Small modules and an in-memory dataset for fast MetaTrainer tests."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from tdfusion_core.data.sample import Sample
from tdfusion_core.training.config import TrainConfig
from tdfusion_core.training.trainer import MetaTrainer


class SmallFusion(nn.Module):
    def __init__(self, k: int = 2) -> None:
        super().__init__()
        self.a = nn.Conv2d(k, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.b(torch.tanh(self.a(x))))


class SmallGenerator(nn.Module):
    def __init__(self, k: int = 2) -> None:
        super().__init__()
        self.c = nn.Conv2d(k, k, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.c(x), dim=1)


class BlobScenes(torch.utils.data.Dataset):
    """IR shows a warm square (class 1), visible a dark stripe (class 2); 3-class masks."""

    num_classes = 3

    def __init__(self, n: int = 8, size: tuple[int, int] = (24, 32), seed: int = 0) -> None:
        self.n, self.size, self.seed = n, size, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Sample:
        g = torch.Generator().manual_seed(self.seed * 1000 + i)
        h, w = self.size
        ir = 0.2 + 0.05 * torch.rand(h, w, generator=g)
        vi = 0.6 + 0.05 * torch.rand(h, w, generator=g)
        mask = torch.zeros(h, w, dtype=torch.long)
        t, l = int(torch.randint(0, h - 8, (1,), generator=g)), int(torch.randint(0, w - 8, (1,), generator=g))
        ir[t : t + 8, l : l + 8] = 0.9
        mask[t : t + 8, l : l + 8] = 1
        r = int(torch.randint(0, h - 4, (1,), generator=g))
        vi[r : r + 4, :] = 0.1
        mask[r : r + 4, :] = 2
        chroma = torch.full((2, 2, h, w), 0.5)
        return Sample(torch.stack([ir, vi]), chroma, mask, f"s{i}")


def small_settings(**changes: Any) -> dict[str, Any]:
    """``TrainConfig`` fields of a small CPU run, the base of every small trainer in the tests: tiny-seg 4 channels
    wide, 2 epochs of 2 meta and 3 fusion steps on 16-pixel crops and 24x32 task inputs, every step size 1e-2, no
    progress bar; ``changes`` replace or add fields."""
    settings: dict[str, Any] = dict(
        task="tiny-seg",
        task_options={"width": 4},
        epochs=2,
        meta_steps=2,
        fusion_steps=3,
        crop_size=16,
        task_size=(24, 32),
        lr_fusion=1e-2,
        lr_task=1e-2,
        lr_generator=1e-2,
        progress=False,
    )
    settings.update(changes)
    return settings


def small_trainer(out_dir=None, resume: bool = False, n: int = 8, **overrides) -> MetaTrainer:
    settings = small_settings(seed=0, deterministic=True, log_images=out_dir is not None)
    settings.update(overrides)
    config = TrainConfig(**settings)
    torch.manual_seed(config.seed)
    return MetaTrainer(
        config,
        train_set=BlobScenes(n),
        fusion_net=SmallFusion(),
        loss_generator=SmallGenerator(),
        out_dir=out_dir,
        resume=resume,
    )
