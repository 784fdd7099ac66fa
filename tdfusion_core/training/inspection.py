"""What a run's current networks produce, for logs, figures and evaluation during and after training.

F's fused images and G's weights (both in eval mode, no gradient), G's mean weight per source, the epoch figure,
T's metrics on F's fused images, and the model file that ``tdfusion fuse --checkpoint`` reads.
:class:`~tdfusion_core.training.trainer.MetaTrainer` exposes each as a method (``fuse``, ``source_weight_means``,
``epoch_figure``, ``evaluate``, ``export_model``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from tdfusion_core.common.colour import task_input
from tdfusion_core.common.modes import eval_mode
from tdfusion_core.kernel.task import Task
from tdfusion_core.training.batches import Batcher, resize_images
from tdfusion_core.training.config import TrainConfig

#: ``sources (B, K, H, W) -> (fused (B, 1, H, W), weights (B, K, H, W))``
Fuse = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def fuse_and_weigh(
    fusion_net: nn.Module,
    loss_generator: nn.Module,
    weights: Callable[[torch.Tensor], torch.Tensor],
    sources: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """F's fused image (clamped to [0, 1]) and the fusion loss's ``weights`` of ``sources``, with F and G in eval
    mode (their modes restored)."""
    with eval_mode(fusion_net, loss_generator):
        return fusion_net(sources).clamp(0, 1), weights(sources)


@torch.no_grad()
def mean_source_weights(
    loss_generator: nn.Module, dataset: Any, size: tuple[int, int], device: torch.device, max_samples: int = 8
) -> list[float]:
    """Mean weight G gives each source over the first ``max_samples`` samples of ``dataset`` resized to ``size``."""
    totals: torch.Tensor | None = None
    count = min(max_samples, len(dataset))
    with eval_mode(loss_generator):
        for i in range(count):
            sources = resize_images(dataset[i].sources[None], size).to(device)
            means = loss_generator(sources).mean(dim=(0, 2, 3)).float().cpu()
            totals = means if totals is None else totals + means
    return [] if totals is None else (totals / count).tolist()


def weight_figure(fuse: Fuse, dataset: Any, size: tuple[int, int], count: int = 4) -> np.ndarray:
    """RGB grid (titled columns, 0-1 colour bar) of sources, fused image and weight maps of the first ``count``
    samples of ``dataset`` (rows), resized to ``size``."""
    from tdfusion_core.training.visual import weight_grid

    count = min(count, len(dataset))
    sources = torch.stack([resize_images(dataset[i].sources[None], size)[0] for i in range(count)])
    fused, weights = fuse(sources)
    return weight_grid(sources, fused.cpu(), weights.cpu())


def save_epoch_figure(out_dir: Path, epoch: int, figure: np.ndarray) -> Path:
    """``figure`` as ``<out_dir>/images/epoch_NNNN.png`` (``epoch`` counted from 0, the name from 1)."""
    from tdfusion_core.training.visual import save_png

    return save_png(out_dir / "images" / f"epoch_{epoch + 1:04d}.png", figure)


@torch.no_grad()
def evaluate_on_fused(
    task: Task, batcher: Batcher, fuse: Fuse, dataset: Any, device: torch.device, batch_size: int = 4
) -> dict[str, float]:
    """Task metrics of T on F's fused images of ``dataset`` (resized to the task size, targets to match)."""

    def batches() -> Iterator[Any]:
        for start in range(0, len(dataset), batch_size):
            samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            sources, chroma, targets = batcher.task_view(samples)
            fused, _ = fuse(sources)
            yield task_input(fused, chroma.to(device), task.input_kind), targets

    return task.evaluate(task.network, batches())


def export_model(
    path: str | Path,
    config: TrainConfig,
    fusion_net: nn.Module,
    loss_generator: nn.Module,
    num_sources: int,
    epochs: int,
) -> Path:
    """F and G in the documented model format (:func:`~tdfusion_core.training.checkpoints.save_model_checkpoint`), named
    by ``config``'s architectures and recording the task, the data and the epochs trained."""
    from tdfusion_core.training.checkpoints import save_model_checkpoint

    path = Path(path)
    save_model_checkpoint(
        path,
        fusion_net=fusion_net,
        fusion_arch="discriminative" if config.discriminative else config.fusion_net,
        fusion_config=dict(config.fusion_options),
        loss_generator=loss_generator,
        lossgen_arch=config.loss_generator,
        lossgen_config=dict(config.loss_generator_options),
        num_sources=num_sources,
        extra={
            "task": "multi" if config.tasks else config.task,
            "data": config.data,
            **({"tasks": [dict(t) for t in config.tasks]} if config.tasks else {}),
            "epochs": epochs,
        },
    )
    return path
