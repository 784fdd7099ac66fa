"""Data: samples and batches of registered sources, datasets, synthetic scenes, and reading them in worker processes.

The dataset classes are re-exported lazily (``from tdfusion_core.data import PairedDataset``) so that importing
the light ``Sample`` type does not load the readers.
"""

from __future__ import annotations

import importlib
from typing import Any

from tdfusion_core.data.sample import Batch, Sample, collate_samples

_LAZY = {
    "PairedDataset": "tdfusion_core.data.paired",
    "read_groups": "tdfusion_core.data.loading",
    "SyntheticScenes": "tdfusion_core.data.synthetic",
    "write_synthetic": "tdfusion_core.data.synthetic",
    "preset_dataset": "tdfusion_core.data.presets",
}

__all__ = ["Batch", "Sample", "collate_samples", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tdfusion_core.data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
