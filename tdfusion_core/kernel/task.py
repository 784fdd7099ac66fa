"""The Task contract: what a downstream task network must provide to drive the learnable fusion loss.

A task (segmentation, detection, counting, ...) wraps one network ``T``. TDFusion needs five things from it:

1. **Build** the network from configuration alone, never downloading anything (:meth:`Task.build_network`); weights
   come only from a local ``checkpoint`` path (:meth:`Task.load_checkpoint`).
2. **Declare its input** (:attr:`Task.input_kind`): ``"luminance"`` is the fused Y channel ``(B, 1, H, W)``;
   ``"rgb"`` is ``(B, 3, H, W)`` rebuilt by core from the fused Y and the sources' chroma
   (:func:`tdfusion_core.common.colour.task_input`, differentiable). Images are in ``[0, 1]``; normalisation is the task's.
3. **Compute a scalar loss** (:meth:`Task.compute_loss`) that is differentiable with respect to the images. Core
   calls it through :func:`functional_task_loss`, which substitutes parameters (:mod:`tdfusion_core.kernel.functional`);
   so the loss must reach the parameters only through ``network`` (calling it, or reading its attributes), never
   through tensors cached elsewhere. This is how the one-step-updated copy ``T'`` is evaluated without mutating ``T``.
4. **Handle its targets** consistently with the images: resize them to the task size, collate and move them
   (:meth:`Task.resize_targets`, :meth:`Task.collate_targets`, :meth:`Task.targets_to`; the fusion loss's crops
   carry no targets, so training never crops or flips one). Defaults exist for the two target kinds core knows (``"mask"``: ``LongTensor (H, W)`` of class
   indices, 255 = ignore; ``"boxes"``: ``Tensor (N, 5)`` of ``class, x0, y0, x1, y1`` in pixels).
5. **Evaluate** a network on batches and return named metrics (:meth:`Task.evaluate`).

Invariants core relies on: ``compute_loss`` returns a finite 0-dim tensor for valid input; it does not step an
optimizer or modify parameters; it may update BatchNorm running statistics (core saves and restores them around the
meta step). ``evaluate`` runs with the network in eval mode, whoever calls it: the Task base class wraps every
subclass's ``evaluate`` so that it switches the network to eval mode and restores its previous mode afterwards
(:func:`in_eval_mode`); a task need not do it itself.
"""

from __future__ import annotations

import abc
import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn

from tdfusion_core.common.modes import eval_mode
from tdfusion_core.data import targets as target_ops
from tdfusion_core.kernel.functional import call_with_parameters

InputKind = Literal["luminance", "rgb"]
TargetKind = Literal["mask", "boxes", "none"]

#: methods a concrete Task must implement
REQUIRED_METHODS = ("build_network", "compute_loss", "evaluate")


class TaskDefinitionError(TypeError):
    """A Task subclass that does not satisfy the contract (raised at registration time)."""


def check_task_class(cls: type[Task]) -> None:
    """Raise :class:`TaskDefinitionError` if ``cls`` cannot be instantiated or declares invalid attributes."""
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise TaskDefinitionError(
            f"task class {cls.__module__}.{cls.__qualname__} does not implement required method(s): "
            f"{', '.join(missing)} (see tdfusion_core.kernel.task.Task)"
        )
    if cls.input_kind not in ("luminance", "rgb"):
        raise TaskDefinitionError(f"{cls.__qualname__}.input_kind must be 'luminance' or 'rgb', not {cls.input_kind!r}")
    if cls.target_kind not in ("mask", "boxes", "none"):
        raise TaskDefinitionError(
            f"{cls.__qualname__}.target_kind must be 'mask', 'boxes' or 'none', not {cls.target_kind!r}"
        )
    for name in REQUIRED_METHODS:
        if not inspect.isfunction(getattr(cls, name, None)):
            raise TaskDefinitionError(f"{cls.__qualname__}.{name} must be a method")


def in_eval_mode(evaluate: Callable[..., dict[str, float]]) -> Callable[..., dict[str, float]]:
    """Wrap a task's ``evaluate(self, network, batches)``: ``network`` in eval mode during it, previous mode after."""
    if getattr(evaluate, "runs_in_eval_mode", False):
        return evaluate

    @functools.wraps(evaluate)
    def wrapper(self: Task, network: nn.Module, batches: Iterable[tuple[torch.Tensor, Any]]) -> dict[str, float]:
        with eval_mode(network):
            return evaluate(self, network, batches)

    wrapper.runs_in_eval_mode = True  # type: ignore[attr-defined]
    return wrapper


class Task(abc.ABC):
    """Abstract downstream task. Subclass it, implement the three abstract methods, register it with a hook.

    Args:
        num_classes: number of classes, usually taken from the dataset.
        checkpoint: optional local path of weights loaded into the network after it is built.
        lr: learning rate of the task's optimizer (Adam, as the released code).
        **config: task-specific options, kept in :attr:`config`.
    """

    #: registry name (informative; the registration hook decides the name users type)
    name: ClassVar[str] = ""
    #: what the network takes: fused luminance (1 channel) or RGB rebuilt with the sources' chroma (3 channels)
    input_kind: ClassVar[InputKind] = "rgb"
    #: which labels the task uses; selects the default target operations (resize, collate) and the labels loaded
    target_kind: ClassVar[TargetKind] = "mask"
    #: (height, width) the images are resized to for the task loss, unless the run configures another size
    default_input_size: ClassVar[tuple[int, int] | None] = None
    #: the metric of :meth:`evaluate` that selects a run's ``best.pt``; ``None``: the first metric evaluate returns
    primary_metric: ClassVar[str | None] = None
    #: ``"max"`` when a larger :attr:`primary_metric` is better (mIoU, mAP), ``"min"`` otherwise (an error rate)
    primary_mode: ClassVar[Literal["max", "min"]] = "max"
    #: free-form options this task reads from :attr:`config`, besides its ``__init__`` parameters; ``None``: any key
    #: is accepted (``task_options`` cannot be checked for typos)
    config_keys: ClassVar[tuple[str, ...] | None] = None
    #: mask targets: the trainer passes them at the image's own resolution instead of resizing them to the task
    #: size, and ``compute_loss`` brings the logits to the mask's size (the released segmentation loss)
    full_resolution_targets: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        evaluate = cls.__dict__.get("evaluate")
        if inspect.isfunction(evaluate) and not getattr(evaluate, "__isabstractmethod__", False):
            cls.evaluate = in_eval_mode(evaluate)  # type: ignore[method-assign]

    def __init__(
        self, num_classes: int | None = None, checkpoint: str | Path | None = None, lr: float = 1e-4, **config: Any
    ) -> None:
        self.num_classes = num_classes
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.lr = lr
        self.config: dict[str, Any] = dict(config)
        self._network: nn.Module | None = None

    @classmethod
    def accepted_options(cls) -> set[str] | None:
        """Names ``task_options`` may use: the ``__init__`` parameters along the class hierarchy plus
        :attr:`config_keys`; ``None`` when the task takes any key (it declares no ``config_keys``)."""
        names: set[str] = set()
        for klass in cls.__mro__:
            if "__init__" not in vars(klass):
                continue
            params = list(inspect.signature(vars(klass)["__init__"]).parameters.values())[1:]
            names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
            if klass is Task:
                return None if cls.config_keys is None else names | set(cls.config_keys)
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                return names
        return None

    def select_primary(self, metrics: Mapping[str, float]) -> tuple[str, float] | None:
        """``(name, value)`` of the metric that ranks checkpoints (:attr:`primary_metric`), ``None`` if absent."""
        name = self.primary_metric or next(iter(metrics), None)
        if name is None or name not in metrics:
            return None
        return name, float(metrics[name])

    # ------------------------------------------------------------------ network
    @abc.abstractmethod
    def build_network(self) -> nn.Module:
        """Build the task network from :attr:`config`, randomly initialised; must not download anything."""

    @property
    def network(self) -> nn.Module:
        """The task network, built (and loaded from :attr:`checkpoint`) on first access."""
        if self._network is None:
            net = self.build_network()
            if self.checkpoint is not None:
                self.load_checkpoint(net, self.checkpoint)
            self._network = net
        return self._network

    @network.setter
    def network(self, value: nn.Module) -> None:
        self._network = value

    def load_checkpoint(self, network: nn.Module, path: Path) -> None:
        """Load weights from a local file into ``network`` (a state dict, or a dict with a ``state_dict`` key).

        Loaded with ``weights_only=True``: no code from the file is executed (a file that needs it is refused with
        how to convert a trusted one, see :func:`tdfusion_core.common.torch_files.read_torch_file`).
        """
        from tdfusion_core.common.torch_files import read_torch_file

        state = read_torch_file(path, "cpu", what="task checkpoint")
        if isinstance(state, Mapping) and "state_dict" in state:
            state = state["state_dict"]
        network.load_state_dict(state)

    # ------------------------------------------------------------------ loss and evaluation
    @abc.abstractmethod
    def compute_loss(self, network: nn.Module, images: torch.Tensor, targets: Any) -> torch.Tensor:
        """Scalar training loss of ``network`` on ``images`` ``(B, C, H, W)`` in [0, 1] against collated ``targets``.

        Must be differentiable with respect to ``images`` and reach parameters only through ``network``.
        """

    @abc.abstractmethod
    def evaluate(self, network: nn.Module, batches: Iterable[tuple[torch.Tensor, Any]]) -> dict[str, float]:
        """Metrics of ``network`` over ``(images, targets)`` batches, e.g. ``{"mIoU": ..., "mAcc": ...}``.

        Runs with ``network`` in eval mode (the base class switches it and restores the previous mode after).
        """

    def make_optimizer(self, parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        """The optimizer of T (Adam at :attr:`lr`, as the released code); override for another."""
        return torch.optim.Adam(parameters, lr=self.lr)

    # ------------------------------------------------------------------ targets
    def collate_targets(self, targets: list[Any]) -> Any:
        """Combine per-sample targets into a batch (masks: stacked ``(B, H, W)``; boxes: a list)."""
        if self.target_kind == "mask":
            return torch.stack(targets)
        return list(targets)

    def resize_targets(self, target: Any, size: tuple[int, int], new_size: tuple[int, int]) -> Any:
        """Resize one sample's target from image size ``size`` to ``new_size`` (both ``(H, W)``)."""
        return target_ops.apply("resize", self.target_kind, target, size, new_size)

    def targets_to(self, targets: Any, device: torch.device | str) -> Any:
        """Move collated targets to ``device``."""
        return target_ops.to_device(targets, device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_classes={self.num_classes}, config={self.config})"


class TaskLoss(nn.Module):
    """``nn.Module`` view of ``task.compute_loss`` so that core can substitute T's parameters.

    Parameter names are those of the task network prefixed with ``"network."``.
    """

    def __init__(self, task: Task, network: nn.Module | None = None) -> None:
        super().__init__()
        self._task = task
        self.network = network if network is not None else task.network

    def forward(self, images: torch.Tensor, targets: Any) -> torch.Tensor:
        return self._task.compute_loss(self.network, images, targets)


def functional_task_loss(
    task: Task,
    images: torch.Tensor,
    targets: Any,
    params: Mapping[str, torch.Tensor] | None = None,
    network: nn.Module | None = None,
) -> torch.Tensor:
    """Task loss with T's parameters replaced by ``params`` (names as in ``network.named_parameters()``).

    ``params=None`` uses the network's own parameters. The network module itself is never modified.
    """
    wrapper = TaskLoss(task, network)
    if params is None:
        return wrapper(images, targets)
    prefixed = {f"network.{name}": value for name, value in params.items()}
    return call_with_parameters(wrapper, prefixed, (images, targets))
