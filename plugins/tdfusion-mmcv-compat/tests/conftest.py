"""Fixtures of the tdfusion-mmcv-compat tests: the fallback installed before mmcv.ops is imported."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="session")
def mmcv_ops() -> Any:
    """``mmcv.ops`` imported through :func:`tdfusion_mmcv_compat.install` (the fallback on mmcv-lite)."""
    import tdfusion_mmcv_compat

    tdfusion_mmcv_compat.install()
    import mmcv.ops

    return mmcv.ops
