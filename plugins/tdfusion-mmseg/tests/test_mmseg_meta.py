"""A few MetaTrainer steps with SegFormer-b0 as T on the synthetic IR/visible scenes (Algorithm 1, both phases)."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from mmseg_testutils import NUM_CLASSES, TinyFusion, TinyGenerator
from tdfusion_openmmlab.testing import PhaseChecks


def test_meta_trainer_steps_with_segformer_on_synthetic_scenes(base_task: Any) -> None:
    from tdfusion_mmseg.task import SegFormerTask

    from tdfusion_core.data.synthetic import SyntheticScenes
    from tdfusion_core.training.config import TrainConfig
    from tdfusion_core.training.trainer import MetaTrainer

    train_set = SyntheticScenes(n=4, size=(64, 80), target="mask", seed=3)
    assert train_set.num_classes == NUM_CLASSES
    task = SegFormerTask(num_classes=train_set.num_classes)
    task.network = copy.deepcopy(base_task.network)
    config = TrainConfig(
        task="segformer",
        epochs=1,
        meta_steps=2,
        fusion_steps=1,
        batch_size=1,
        crop_size=(32, 32),
        task_size=(32, 40),
        progress=False,
        log_images=False,
        seed=0,
    )  # fmt: skip  (task input half the scene size: the masks stay at 64x80, the full-resolution loss)
    torch.manual_seed(0)
    trainer = MetaTrainer(
        config, task=task, train_set=train_set, fusion_net=TinyFusion(), loss_generator=TinyGenerator()
    )
    checks = PhaseChecks(trainer, task.network)

    seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    compute_loss = task.compute_loss

    def recording(network: Any, images: torch.Tensor, targets: Any) -> torch.Tensor:
        seen.append((tuple(images.shape[1:]), tuple(targets.shape[-2:])))
        return compute_loss(network, images, targets)

    task.compute_loss = recording  # type: ignore[method-assign]
    checks.meta()  # finite losses, G learns, T' functional (T's state unchanged)
    fusion = checks.fusion()  # finite task loss, T learns, the same parameter tensors (T's optimizer holds them)
    assert math.isfinite(fusion["fusion/fusion_loss"])
    # T saw the fused luminance at the task size and the masks at their native size, in both phases
    assert seen and set(seen) == {((1, 32, 40), (64, 80))}


def test_bench_meta_runs_segformer_on_cpu(offline_guard: None) -> None:
    """The meta-step benchmark behind ``tdfusion bench meta --task segformer`` (small sizes, one timed step)."""
    from tdfusion_core.apps.bench.meta import bench_meta, format_meta_results

    results = bench_meta(
        task="segformer", device="cpu", modes=("jvp",), iters=1, warmup=0, image_size=(64, 80), crop_size=(32, 32),
        task_size=(64, 80), num_classes=NUM_CLASSES,
    )  # fmt: skip
    timing = results["modes"]["jvp"]
    assert results["task"] == "segformer" and results["task_size"] == [64, 80]
    assert timing["meta_pair_ms"] > 0 and timing["fusion_step_ms"] > 0 and timing["peak_memory_mb"] > 0
    assert "jvp" in format_meta_results(results)
