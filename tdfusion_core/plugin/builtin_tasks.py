"""Built-in plugin registering the tasks that ship with tdfusion-core."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tdfusion_core import hookimpl
from tdfusion_core.tasks.tiny_seg import TinySegTask


@hookimpl
def tdfusion_register_tasks() -> Mapping[str, Any]:
    return {"tiny-seg": TinySegTask}
