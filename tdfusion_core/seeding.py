"""Seeding: the one place that seeds the global generators and derives the run's per-epoch generators.

A run is reproducible from ``TrainConfig.seed``: :func:`seed_everything` seeds Python, NumPy and torch once (model
initialisation), and every random choice of training (crop windows, the fusion phase's order) comes from
:func:`epoch_generator`, a pure function of the seed, the epoch and the phase, so it is the same in every process
and after a resume.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

#: the two phases of an epoch, as :func:`epoch_generator` numbers them
META_PHASE, FUSION_PHASE = 1, 2


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; with ``deterministic`` also force deterministic torch kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def epoch_generator(seed: int, epoch: int, phase: int) -> torch.Generator:
    """The seeded generator of one phase of one epoch (crop windows, the fusion phase's permutation)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7919 + phase)
