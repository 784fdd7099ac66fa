"""Entry point of the ``tdfusion-yolo`` distribution (group ``tdfusion``, name ``yolo``): registers the ``yolo`` task.

Importing this module does not import ultralytics (that happens when a network is first built), so listing plugins
stays fast; the package's ``__init__`` has already made ultralytics offline by then.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tdfusion_core import hookimpl
from tdfusion_yolo import problem
from tdfusion_yolo.task import YoloTask


@hookimpl
def tdfusion_register_tasks() -> Mapping[str, Any]:
    """Register :class:`tdfusion_yolo.task.YoloTask` as ``yolo``."""
    return {"yolo": YoloTask}


@hookimpl(optionalhook=True)
def tdfusion_plugin_ready() -> str | None:
    """``None`` when ultralytics and torchvision are installed, else the install line (``tdfusion plugins``)."""
    return problem()
