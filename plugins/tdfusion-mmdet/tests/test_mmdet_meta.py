"""A few MetaTrainer steps with RTMDet-tiny as T on real LLVIP pairs (Algorithm 1, both phases)."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from mmdet_testutils import TinyFusion, TinyGenerator, shared_path


def test_meta_trainer_steps_with_rtmdet_on_llvip(build_detector: Any) -> None:
    from tdfusion_mmdet.task import MMDetTask
    from torch.utils.data import Subset

    from tdfusion_core.config import TrainConfig
    from tdfusion_core.data.paired import PairedDataset
    from tdfusion_core.trainer import MetaTrainer

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
    t_state = {k: v.clone() for k, v in task.network.state_dict().items()}
    t_params = list(task.network.parameters())
    g_before = [p.detach().clone() for p in trainer.loss_generator.parameters()]

    meta = trainer.meta_phase(0)
    assert math.isfinite(meta["meta/task_loss"]) and math.isfinite(meta["meta/fusion_loss"])
    assert any(not torch.equal(a, b) for a, b in zip(g_before, trainer.loss_generator.parameters())), "G must learn"
    for key, value in task.network.state_dict().items():  # T' is functional; BatchNorm statistics restored
        assert torch.equal(value, t_state[key]), f"the meta step changed T's {key}"

    fusion = trainer.fusion_phase(0)
    assert math.isfinite(fusion["fusion/task_loss"]) and fusion["fusion/task_loss"] > 0
    assert any(not torch.equal(v, t_state[k]) for k, v in task.network.state_dict().items()), "T must learn"
    assert all(a is b for a, b in zip(task.network.parameters(), t_params))
    # RTMDet shares its head convs across levels: still one tensor after the functional T' steps and the update
    assert head.cls_convs[1][0].conv.weight is head.cls_convs[0][0].conv.weight
