"""Entry point ``mmseg`` of the ``tdfusion`` group: registers the tasks ``mmseg`` and ``segformer``.

Importing this module is cheap: mmseg (and the mmcv fallback) are imported only when a task builds its network.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tdfusion_core import hookimpl
from tdfusion_mmseg.task import MMSegTask, SegFormerTask


@hookimpl
def tdfusion_register_tasks() -> Mapping[str, Any]:
    """``mmseg``: any MMSegmentation config (SegFormer mit-b0 by default); ``segformer``: mit-b0 … b5."""
    return {"mmseg": MMSegTask, "segformer": SegFormerTask}
