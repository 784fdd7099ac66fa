"""What a run was built from, recorded so that ``config.yaml`` and ``model.pt`` never name the wrong task or data.

A :class:`tdfusion_core.training.trainer.MetaTrainer` given a Task *instance* (the custom-task route) or a dataset instance
records ``task: python:<module>.<Class>`` and ``data: <the dataset's root folder>`` (or ``python:<module>.<Class>``
for a dataset without a ``root``) instead of the registry defaults it was not built from. ``tdfusion train
--resume`` cannot rebuild such objects from names and says so (:func:`check_rebuildable`); resume them in Python
by passing the same instances with ``resume=True``.
"""

from __future__ import annotations

from typing import Any

from tdfusion_core.plugin import registry

PYTHON_PREFIX = "python:"


def class_path(obj: Any) -> str:
    """``module.QualifiedName`` of ``obj``'s class."""
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _registered_as(kind: str, name: str, obj: Any) -> bool:
    try:
        factory = registry.lookup(kind, name)
    except LookupError:
        return False
    return isinstance(factory, type) and type(obj) is factory


def record_instances(config: Any, task: Any | None, train_set: Any | None) -> Any:
    """``config`` with ``task`` / ``data`` describing the instances actually used (unchanged when built by name)."""
    changes: dict[str, Any] = {}
    if task is not None and not config.tasks and not _registered_as("task", config.task, task):
        changes["task"] = PYTHON_PREFIX + class_path(task)
    if train_set is not None:
        root = getattr(train_set, "root", None)
        changes["data"] = str(root) if root is not None else PYTHON_PREFIX + class_path(train_set)
    return config.evolve(**changes) if changes else config


def check_rebuildable(config: Any, need_task: bool, need_data: bool, where: str = "this run") -> None:
    """Refuse to rebuild from names what was recorded as a Python instance (a one-line ``ValueError``)."""
    for needed, key in ((need_task, "task"), (need_data, "data")):
        value = str(getattr(config, key))
        if needed and value.startswith(PYTHON_PREFIX):
            raise ValueError(
                f"{where} was built in Python from a {key} instance ({value[len(PYTHON_PREFIX) :]}), which cannot be "
                f"rebuilt from its name: resume it in Python with MetaTrainer(config, {key}=<the same {key}>, "
                "resume=True), or give --task/--data of a registered task or a dataset folder"
            )
