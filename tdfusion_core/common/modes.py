"""Running modules in eval mode for a while: one context manager, so every caller restores the modes the same way.

Inspection, G's statistics and a task's evaluation switch networks to eval mode (BatchNorm's running statistics,
no dropout) and must leave them exactly as they were, also when the block raises. Each submodule's own flag is
restored, so a network that keeps some layers in eval mode while training (frozen BatchNorm) gets them back so.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """``modules`` in eval mode within the block; every submodule's previous mode restored on exit."""
    saved = [(sub, sub.training) for module in modules for sub in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for sub, training in saved:
            sub.training = training
