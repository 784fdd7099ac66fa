"""Entry point ``mmdet`` of the ``tdfusion`` group: registers the task ``mmdet``.

Importing this module is cheap: mmdet (and the mmcv fallback) are imported only when the task builds its network.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tdfusion_core import hookimpl
from tdfusion_mmdet.task import MMDetTask


@hookimpl
def tdfusion_register_tasks() -> Mapping[str, Any]:
    """``mmdet``: any MMDetection config (RTMDet-tiny by default)."""
    return {"mmdet": MMDetTask}
