"""Entry point ``mmseg`` of the ``tdfusion`` group: registers the tasks ``mmseg`` and ``segformer``.

Importing this module is cheap: mmseg (and the mmcv fallback) are imported only when a task builds its network.
``tdfusion plugins`` asks :func:`tdfusion_plugin_ready` whether mmcv / mmengine / mmseg are usable here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tdfusion_openmmlab.readiness import problem

from tdfusion_core import hookimpl
from tdfusion_mmseg.task import MMSegTask, SegFormerTask


@hookimpl
def tdfusion_register_tasks() -> Mapping[str, Any]:
    """``mmseg``: any MMSegmentation config (SegFormer mit-b0 by default); ``segformer``: mit-b0 … b5."""
    return {"mmseg": MMSegTask, "segformer": SegFormerTask}


@hookimpl(optionalhook=True)
def tdfusion_plugin_ready() -> str | None:
    """``None`` when mmcv (or mmcv-lite), mmengine and mmseg are installed and compatible, else the fix."""
    return problem("mmseg")
