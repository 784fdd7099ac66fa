"""A training run's state: everything a :class:`~tdfusion_core.training.trainer.MetaTrainer` needs to continue bit for bit.

The state is what ``checkpoints/last.pt`` holds (written by :func:`tdfusion_core.training.run_files.save_training_state`):
F, G and T, the three optimizers and schedules, the epoch and step counters, the metrics history and the random
number generators of torch (CPU and CUDA), NumPy and Python. It holds nothing specific to a process, so a run saved
with N processes resumes with any number. ``trainer`` below is a ``MetaTrainer``.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch

from tdfusion_core import __version__
from tdfusion_core.training.run_files import check_resume_config, load_training_state

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "tdfusion-train-state"


def rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), NumPy and Python generators' states, as tensors and lists (``weights_only``-safe)."""
    np_state: tuple[Any, ...] = tuple(np.random.get_state(legacy=True))
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": torch.from_numpy(np.asarray(np_state[1]).astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": list(random.getstate()[1]),
    }


def restore_rng(rng: dict[str, Any]) -> None:
    """Set the generators to a state from :func:`rng_state`."""
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    np.random.set_state(("MT19937", rng["numpy"].numpy().astype(np.uint32), rng["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(rng["python"]), None))


def training_state(trainer: Any) -> dict[str, Any]:
    """``trainer``'s state (module docstring)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": __version__,
        "config": trainer.config.to_dict(),
        "world_size": trainer.dist.world_size,  # informative: the state does not depend on it
        "epoch": trainer.epoch,
        "meta_step": trainer.meta_step_count,
        "fusion_step": trainer.fusion_step_count,
        "fusion_net": trainer.fusion_net.state_dict(),
        "loss_generator": trainer.loss_generator.state_dict(),
        "task_net": trainer.task.network.state_dict(),
        "opt_fusion": trainer.opt_fusion.state_dict(),
        "opt_task": trainer.opt_task.state_dict(),
        "opt_generator": trainer.opt_generator.state_dict(),
        "schedulers": [s.state_dict() for s in trainer.schedulers],
        "history": trainer.history,
        "rng": rng_state(),
    }


def restore_training_state(trainer: Any, state: dict[str, Any]) -> None:
    """Put ``trainer`` back in a state from :func:`training_state`."""
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError("not a tdfusion training checkpoint (format key missing or different)")
    trainer.fusion_net.load_state_dict(state["fusion_net"])
    trainer.loss_generator.load_state_dict(state["loss_generator"])
    trainer.task.network.load_state_dict(state["task_net"])
    trainer.opt_fusion.load_state_dict(state["opt_fusion"])
    trainer.opt_task.load_state_dict(state["opt_task"])
    trainer.opt_generator.load_state_dict(state["opt_generator"])
    for sched, s in zip(trainer.schedulers, state["schedulers"]):
        sched.load_state_dict(s)
    trainer.epoch = int(state["epoch"])
    trainer.meta_step_count = int(state["meta_step"])
    trainer.fusion_step_count = int(state["fusion_step"])
    trainer.history = list(state["history"])
    restore_rng(state["rng"])


def resume(trainer: Any) -> None:
    """Continue ``trainer`` from its ``checkpoint_path`` (written with any number of processes); a configuration
    that differs from the checkpoint's in a setting that matters is refused, naming it."""
    state, path = load_training_state(trainer.checkpoint_path, map_location=trainer.device)
    check_resume_config(state.get("config", {}), trainer.config.to_dict(), path)
    trainer.load_state_dict(state)
    if trainer.dist.is_main:
        saved = int(state.get("world_size", 1))
        log.info(
            "resumed from %s after epoch %d (saved by %d process%s, resumed by %d)",
            path,
            trainer.epoch,
            saved,
            "" if saved == 1 else "es",
            trainer.dist.world_size,
        )
