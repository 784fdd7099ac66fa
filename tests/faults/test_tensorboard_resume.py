"""Issue 17, last row: a killed and resumed run shows every step once in TensorBoard (no duplicated points)."""

from __future__ import annotations

from types import SimpleNamespace

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tdfusion_core.training import tb_logger


def _trainer(out, epoch: int, meta: int, fusion: int) -> SimpleNamespace:
    config = SimpleNamespace(meta_steps=2, fusion_steps=3, log_images=False)
    return SimpleNamespace(
        out_dir=out, epoch=epoch, meta_step_count=meta, fusion_step_count=fusion, config=config, train_set=[0] * 3
    )


def _epoch(trainer, epoch: int, meta_steps: range, fusion_steps: range, value: float) -> None:
    tb_logger.tdfusion_on_epoch_start(trainer=trainer, epoch=epoch)
    for step in meta_steps:
        tb_logger.tdfusion_on_meta_step_end(trainer=trainer, step=step, metrics={"task_loss": value})
    for step in fusion_steps:
        tb_logger.tdfusion_on_fusion_step_end(trainer=trainer, step=step, metrics={"task_loss": value})
    tb_logger.tdfusion_on_epoch_end(trainer=trainer, epoch=epoch, metrics={"task_loss": value})


def _scalars(folder, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_a_resumed_run_logs_each_step_once(tmp_path):
    first = _trainer(tmp_path, 0, 0, 0)
    tb_logger.tdfusion_on_run_start(trainer=first, config=first.config)
    _epoch(first, 0, range(1, 3), range(1, 4), 1.0)  # epoch 1, checkpointed
    _epoch(first, 1, range(3, 5), range(4, 7), 2.0)  # epoch 2 logged, then the process is killed before its checkpoint
    tb_logger.tdfusion_on_run_end(trainer=first, status="failed")

    resumed = _trainer(tmp_path, 1, 2, 3)  # the state of the epoch-1 checkpoint
    tb_logger.tdfusion_on_run_start(trainer=resumed, config=resumed.config)
    _epoch(resumed, 1, range(3, 5), range(4, 7), 3.0)
    tb_logger.tdfusion_on_run_end(trainer=resumed, status="completed")

    root = tmp_path / "tensorboard"
    assert _scalars(root / "meta_steps", "meta_step/task_loss") == [(1, 1.0), (2, 1.0), (3, 3.0), (4, 3.0)]
    fusion = _scalars(root / "fusion_steps", "fusion_step/task_loss")
    assert fusion == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 3.0), (5, 3.0), (6, 3.0)]
    assert _scalars(root, "epoch/task_loss") == [(1, 1.0), (2, 3.0)]
