"""A few MetaTrainer steps with SegFormer-b0 as T on the synthetic IR/visible scenes (Algorithm 1, both phases)."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from mmseg_testutils import NUM_CLASSES, TinyFusion, TinyGenerator


def test_meta_trainer_steps_with_segformer_on_synthetic_scenes(base_task: Any) -> None:
    from tdfusion_mmseg.task import SegFormerTask

    from tdfusion_core.config import TrainConfig
    from tdfusion_core.data.synthetic import SyntheticScenes
    from tdfusion_core.trainer import MetaTrainer

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
    t_state = {k: v.clone() for k, v in task.network.state_dict().items()}
    t_params = list(task.network.parameters())
    g_before = [p.detach().clone() for p in trainer.loss_generator.parameters()]

    seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    compute_loss = task.compute_loss

    def recording(network: Any, images: torch.Tensor, targets: Any) -> torch.Tensor:
        seen.append((tuple(images.shape[1:]), tuple(targets.shape[-2:])))
        return compute_loss(network, images, targets)

    task.compute_loss = recording  # type: ignore[method-assign]
    meta = trainer.meta_phase(0)
    assert math.isfinite(meta["meta/task_loss"]) and math.isfinite(meta["meta/fusion_loss"])
    assert any(not torch.equal(a, b) for a, b in zip(g_before, trainer.loss_generator.parameters())), "G must learn"
    for key, value in task.network.state_dict().items():  # T' is functional; BatchNorm statistics restored
        assert torch.equal(value, t_state[key]), f"the meta step changed T's {key}"

    fusion = trainer.fusion_phase(0)
    assert math.isfinite(fusion["fusion/task_loss"]) and math.isfinite(fusion["fusion/fusion_loss"])
    assert any(not torch.equal(v, t_state[k]) for k, v in task.network.state_dict().items()), "T must learn"
    assert all(a is b for a, b in zip(task.network.parameters(), t_params))  # optimizer still holds T's parameters
    # T saw the fused luminance at the task size and the masks at their native size, in both phases
    assert seen and set(seen) == {((1, 32, 40), (64, 80))}


def test_bench_meta_runs_segformer_on_cpu(offline_guard: None) -> None:
    """The meta-step benchmark behind ``tdfusion bench meta --task segformer`` (small sizes, one timed step)."""
    from tdfusion_core.bench.meta import bench_meta, format_meta_results

    results = bench_meta(
        task="segformer", device="cpu", modes=("jvp",), iters=1, warmup=0, image_size=(64, 80), crop_size=(32, 32),
        task_size=(64, 80), num_classes=NUM_CLASSES,
    )  # fmt: skip
    timing = results["modes"]["jvp"]
    assert results["task"] == "segformer" and results["task_size"] == [64, 80]
    assert timing["meta_pair_ms"] > 0 and timing["fusion_step_ms"] > 0 and timing["peak_memory_mb"] > 0
    assert "jvp" in format_meta_results(results)
