"""Several downstream tasks at once: one composite :class:`~tdfusion_core.kernel.task.Task` with weighted losses.

A run names its tasks in the configuration (``tasks: [{name, key, weight, options}, ...]``; the single ``task``
field keeps working when ``tasks`` is not set). :class:`MultiTask`'s network is a ``ModuleDict`` of the sub-networks
and its loss ``Σ_i w_i · L_i``; targets are split per sub-task, metrics prefixed with the sub-task's key, and mixed
input kinds served from one RGB image. The rules (which target entry a sub-task takes, input kinds, per-task
losses): ``docs/training.md``, section "Several tasks at once".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn as nn

from tdfusion_core.common.colour import rgb_to_ycbcr
from tdfusion_core.kernel.task import InputKind, TargetKind, Task

#: keys a ``tasks:`` entry may hold
SPEC_KEYS = ("name", "weight", "options", "key", "target")


def normalise_task_specs(value: Any) -> list[dict[str, Any]] | None:
    """Validate ``tasks:`` entries and fill defaults: ``{name, weight=1.0, options={}, key=name, target=None}``.

    Accepts a list of mappings (or of plain names). Raises ``ValueError`` naming the entry that is wrong.
    """
    if value is None:
        return None
    if isinstance(value, (str, Mapping)) or not isinstance(value, Sequence):
        raise ValueError(f"tasks must be a list of {{name, weight, options}} entries, got {type(value).__name__}")
    if not value:
        raise ValueError("tasks must name at least one task (or leave it unset and use `task`)")
    specs: list[dict[str, Any]] = []
    for i, entry in enumerate(value):
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, Mapping):
            raise ValueError(f"tasks[{i}] must be a mapping with at least `name`, got {entry!r}")
        unknown = sorted(set(entry) - set(SPEC_KEYS))
        if unknown:
            raise ValueError(f"tasks[{i}]: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(SPEC_KEYS)}")
        if not isinstance(entry.get("name"), str) or not entry["name"]:
            raise ValueError(f"tasks[{i}] needs a task `name` (a registered task, see `tdfusion plugins`)")
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ValueError(f"tasks[{i}] ({entry['name']}): weight must be a number >= 0, got {weight!r}")
        options = entry.get("options") or {}
        if not isinstance(options, Mapping):
            raise ValueError(f"tasks[{i}] ({entry['name']}): options must be a mapping, got {options!r}")
        key = entry.get("key") or entry["name"]
        target = entry.get("target")
        if target is not None and not isinstance(target, str):
            raise ValueError(f"tasks[{i}] ({entry['name']}): target must be the name of a target entry")
        specs.append({"name": entry["name"], "weight": float(weight), "options": dict(options), "key": str(key),
                      "target": target})  # fmt: skip
    keys = [s["key"] for s in specs]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ValueError(f"tasks: key(s) {', '.join(dupes)} used twice; give each entry a distinct `key`")
    return specs


class TaskTargets(dict[str, Any]):
    """Targets already split per sub-task: ``{key: target}`` (one sample's, or collated)."""


class MultiTask(Task):
    """Composite task: the weighted sum of several tasks' losses on the same fused images.

    Args:
        tasks: ``{key: Task}`` (an ordered mapping) of the sub-tasks.
        weights: ``{key: weight}`` of each task's loss (default 1 each).
        target_keys: ``{key: name}``: which entry of a mapping target each sub-task takes (default: its
            ``target_kind``, then its key).
    """

    name = "multi"
    input_kind: ClassVar[InputKind] = "rgb"
    target_kind: ClassVar[TargetKind] = "none"

    def __init__(
        self,
        tasks: Mapping[str, Task],
        weights: Mapping[str, float] | None = None,
        target_keys: Mapping[str, str | None] | None = None,
    ) -> None:
        if not tasks:
            raise ValueError("MultiTask needs at least one task")
        super().__init__(num_classes=None)
        self.tasks: dict[str, Task] = dict(tasks)
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(self.tasks)) + sorted(set(target_keys or {}) - set(self.tasks))
        if unknown:
            raise ValueError(f"weights / target keys for unknown task key(s): {', '.join(unknown)}")
        self.weights: dict[str, float] = {k: float(weights.get(k, 1.0)) for k in self.tasks}
        self.target_keys: dict[str, str | None] = {k: (target_keys or {}).get(k) for k in self.tasks}
        kinds = {t.input_kind for t in self.tasks.values()}
        self.input_kind = "luminance" if kinds == {"luminance"} else "rgb"  # type: ignore[misc]
        sizes = {t.default_input_size for t in self.tasks.values()} - {None}
        self.default_input_size = next(iter(sizes)) if len(sizes) == 1 else None  # type: ignore[misc]
        #: the last weighted loss of each sub-task (detached), for logging
        self.last_losses: dict[str, torch.Tensor] = {}

    @classmethod
    def from_specs(cls, specs: Sequence[Mapping[str, Any]], dataset: Any = None) -> MultiTask:
        """Build from ``tasks:`` entries (see :func:`normalise_task_specs`) through the task registry.

        A sub-task whose ``target_kind`` is the dataset's (``"mask"`` also for ``target="both"``) gets the
        dataset's ``num_classes`` unless its options give one.
        """
        from tdfusion_core.plugin import registry

        specs = normalise_task_specs(list(specs)) or []
        data_kind = getattr(dataset, "target_kind", None)
        data_classes = getattr(dataset, "num_classes", None)
        tasks: dict[str, Task] = {}
        for spec in specs:
            factory = registry.lookup("task", spec["name"])
            options = dict(spec["options"])
            if data_classes is not None and getattr(factory, "target_kind", None) == data_kind:
                options.setdefault("num_classes", data_classes)
            tasks[spec["key"]] = factory(**options)
        return cls(
            tasks,
            weights={s["key"]: s["weight"] for s in specs},
            target_keys={s["key"]: s["target"] for s in specs},
        )

    # ------------------------------------------------------------------ network and loss
    def build_network(self) -> nn.Module:
        """``ModuleDict`` of the sub-networks, keyed like :attr:`tasks`."""
        return nn.ModuleDict({key: task.network for key, task in self.tasks.items()})

    def _images_for(self, task: Task, images: torch.Tensor) -> torch.Tensor:
        if task.input_kind == self.input_kind:
            return images
        return rgb_to_ycbcr(images)[0]  # a luminance task in a mixed composite

    def compute_loss(self, network: nn.Module, images: torch.Tensor, targets: Any) -> torch.Tensor:
        """``Σ_key weight · task.compute_loss(network[key], images, targets[key])``."""
        targets = self.split_targets(targets)
        total: torch.Tensor | None = None
        losses: dict[str, torch.Tensor] = {}
        for key, task in self.tasks.items():
            loss = task.compute_loss(network[key], self._images_for(task, images), targets[key])  # type: ignore[index]
            losses[key] = loss.detach()
            term = self.weights[key] * loss
            total = term if total is None else total + term
        self.last_losses = losses
        assert total is not None
        return total

    @torch.no_grad()
    def evaluate(self, network: nn.Module, batches: Iterable[tuple[torch.Tensor, Any]]) -> dict[str, float]:
        """Every sub-task's metrics on the same batches, prefixed with its key (``"key/metric"``)."""
        held = [(images, self.split_targets(targets)) for images, targets in batches]
        metrics: dict[str, float] = {}
        for key, task in self.tasks.items():
            sub = [(self._images_for(task, images), targets[key]) for images, targets in held]
            for name, value in task.evaluate(network[key], sub).items():  # type: ignore[index]
                metrics[f"{key}/{name}"] = value
        return metrics

    def make_optimizer(self, parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        """Adam over every sub-network, one parameter group per sub-task at its own ``lr``."""
        wanted = {id(p) for p in parameters}
        groups = []
        for key, task in self.tasks.items():
            params = [p for p in task.network.parameters() if id(p) in wanted]
            if params:
                groups.append({"params": params, "lr": task.lr, "task": key})
        return torch.optim.Adam(groups)

    # ------------------------------------------------------------------ targets
    def _pick(self, key: str, task: Task, target: Any) -> Any:
        if not isinstance(target, Mapping):
            return target
        for name in (self.target_keys[key], task.target_kind, key):
            if name is not None and name in target:
                return target[name]
        raise KeyError(
            f"task {key!r} finds none of {[n for n in (self.target_keys[key], task.target_kind, key) if n]} in the "
            f"sample's target entries {sorted(target)}; set its `target` option to the entry it should use"
        )

    def split_targets(self, target: Any) -> TaskTargets:
        """One sample's (or a batch's) target split per sub-task; a :class:`TaskTargets` passes through."""
        if isinstance(target, TaskTargets):
            return target
        return TaskTargets({key: self._pick(key, task, target) for key, task in self.tasks.items()})

    def collate_targets(self, targets: list[Any]) -> TaskTargets:
        split = [self.split_targets(t) for t in targets]
        return TaskTargets({key: task.collate_targets([t[key] for t in split]) for key, task in self.tasks.items()})

    def resize_targets(self, target: Any, size: tuple[int, int], new_size: tuple[int, int]) -> TaskTargets:
        split = self.split_targets(target)
        return TaskTargets({k: t.resize_targets(split[k], size, new_size) for k, t in self.tasks.items()})

    def targets_to(self, targets: Any, device: torch.device | str) -> TaskTargets:
        split = self.split_targets(targets)
        return TaskTargets({k: t.targets_to(split[k], device) for k, t in self.tasks.items()})

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}: {type(t).__name__} × {self.weights[k]}" for k, t in self.tasks.items())
        return f"MultiTask({parts})"
