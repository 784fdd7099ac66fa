"""Trusting a checkpoint (unpickling it with code execution) is a decision of the person at the command line.

Some tasks (the YOLO plugin's ``trust_checkpoint`` option) can load a pretrained checkpoint with a full unpickle,
which runs whatever code the file holds. A configuration file is often shared or downloaded, so it must never be
able to switch that on: :func:`refuse_trust_from_file` rejects a config file that sets it, and
:func:`without_trust` drops it from a run's own saved ``config.yaml`` on ``--resume``. Only
``tdfusion train --trust-checkpoint`` (:func:`with_trust`) sets it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TRUST_KEY = "trust_checkpoint"


def _option_sets(values: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    found: list[tuple[str, Mapping[str, Any]]] = []
    if isinstance(values.get("task_options"), Mapping):
        found.append(("task_options", values["task_options"]))
    for i, spec in enumerate(values.get("tasks") or []):
        if isinstance(spec, Mapping) and isinstance(spec.get("options"), Mapping):
            found.append((f"tasks[{i}].options", spec["options"]))
    return found


def refuse_trust_from_file(values: Mapping[str, Any], source: str) -> None:
    """Raise :class:`ValueError` if the settings read from ``source`` set ``trust_checkpoint`` anywhere."""
    for where, options in _option_sets(values):
        if TRUST_KEY in options:
            raise ValueError(
                f"{source} sets {where}.{TRUST_KEY}: a configuration file cannot allow code execution from a "
                "checkpoint (it may come from anyone). Remove the key; if you trust the task's checkpoint, pass "
                "--trust-checkpoint on the command line"
            )


def without_trust(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with ``trust_checkpoint`` removed from every task's options (for a run's saved config)."""
    out = dict(values)
    if isinstance(out.get("task_options"), Mapping):
        out["task_options"] = {k: v for k, v in out["task_options"].items() if k != TRUST_KEY}
    if out.get("tasks"):
        out["tasks"] = [
            {**spec, "options": {k: v for k, v in spec.get("options", {}).items() if k != TRUST_KEY}}
            if isinstance(spec, Mapping) and isinstance(spec.get("options"), Mapping)
            else spec
            for spec in out["tasks"]
        ]
    return out


def with_trust(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with ``trust_checkpoint: true`` in the task's options (and every task's, with ``tasks``)."""
    out = dict(values)
    out["task_options"] = {**(out.get("task_options") or {}), TRUST_KEY: True}
    if out.get("tasks"):
        out["tasks"] = [
            {**spec, "options": {**(spec.get("options") or {}), TRUST_KEY: True}} if isinstance(spec, Mapping) else spec
            for spec in out["tasks"]
        ]
    return out
