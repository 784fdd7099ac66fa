"""Entry point ``mmdet`` of the ``tdfusion`` group: registers the task ``mmdet``.

Importing this module is cheap: mmdet (and the mmcv fallback) are imported only when a task builds its network.
``tdfusion plugins`` asks :func:`tdfusion_plugin_ready` whether mmcv / mmengine / mmdet are usable here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tdfusion_openmmlab.readiness import problem

from tdfusion_core import hookimpl
from tdfusion_mmdet.task import MMDetTask


@hookimpl
def tdfusion_register_tasks() -> Mapping[str, Any]:
    """``mmdet``: any MMDetection config (RTMDet-tiny by default)."""
    return {"mmdet": MMDetTask}


@hookimpl(optionalhook=True)
def tdfusion_plugin_ready() -> str | None:
    """``None`` when mmcv (or mmcv-lite), mmengine and mmdet are installed and compatible, else the fix."""
    return problem("mmdet")
