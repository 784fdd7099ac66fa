"""A few MetaTrainer steps with RTMDet-tiny as T on real LLVIP pairs (Algorithm 1, both phases)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from mmdet_testutils import TinyFusion, TinyGenerator, shared_path
from tdfusion_openmmlab.testing import PhaseChecks


def test_meta_trainer_steps_with_rtmdet_on_llvip(build_detector: Any) -> None:
    from tdfusion_mmdet.task import MMDetTask
    from torch.utils.data import Subset

    from tdfusion_core.data.paired import PairedDataset
    from tdfusion_core.training.config import TrainConfig
    from tdfusion_core.training.trainer import MetaTrainer

    llvip = PairedDataset(shared_path("data", "LLVIP"), split="train")
    assert llvip.target_kind == "boxes"
    train_set = Subset(llvip, [0, 1, 2, 3])
    base = build_detector("rtmdet-tiny")
    task = MMDetTask(num_classes=1)
    task.network = copy.deepcopy(base.network)
    config = TrainConfig(
        task="mmdet", epochs=1, meta_steps=2, fusion_steps=1, batch_size=1, crop_size=(32, 32),
        task_size=(64, 80), progress=False, log_images=False, seed=0,
    )  # fmt: skip
    torch.manual_seed(0)
    trainer = MetaTrainer(
        config, task=task, train_set=train_set, fusion_net=TinyFusion(), loss_generator=TinyGenerator()
    )
    head = task.network.model.bbox_head
    checks = PhaseChecks(trainer, task.network)

    checks.meta()  # finite losses, G learns, T' functional (T's state unchanged)
    fusion = checks.fusion()  # finite task loss, T learns, the same parameter tensors
    assert fusion["fusion/task_loss"] > 0
    # RTMDet shares its head convs across levels: still one tensor after the functional T' steps and the update
    assert head.cls_convs[1][0].conv.weight is head.cls_convs[0][0].conv.weight
