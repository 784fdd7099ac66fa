"""Non-finite guard over *all* the state a training step touches, not only its losses and gradients.

A step can put NaN or infinity into state without ever producing a non-finite loss or gradient that the trainer's
checks see: a forward pass in train mode updates BatchNorm running statistics before the loss is computed (so a NaN
input poisons them even when the step is then skipped), and an optimizer with an infinite learning rate turns finite
gradients into infinite parameters and moment estimates. Whatever reaches the state reaches the checkpoint and then
every output of the saved model.

:class:`StepGuard` wraps one step:

* before it, the buffers of the guarded modules are copied (cheap: running statistics and counters);
* after it, every buffer, parameter and optimizer state tensor is checked. If any **buffer** is non-finite, all
  buffers are restored from the copy (counters included; :attr:`StepGuard.restored` names the bad ones, and the
  trainer warns); non-finite **parameters or
  optimizer states** cannot be rolled back without copying them every step, so they raise
  :class:`NonFiniteStateError` and the run stops with the last good checkpoint intact.

:func:`non_finite_tensors` finds the non-finite tensors of any nested state (a checkpoint dict), so nothing
non-finite is ever written (:func:`assert_finite_state`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

_MAX_LISTED = 8


class NonFiniteStateError(RuntimeError):
    """Parameters, optimizer states or tensors about to be saved hold NaN or infinity."""


def non_finite_tensors(state: Any, prefix: str = "") -> list[str]:
    """Dotted names of the floating-point tensors of a nested ``state`` (dicts, lists, tensors) holding NaN/inf."""
    return [name for name, tensor in _walk(state, prefix) if not _finite(tensor)]


def assert_finite_state(state: Any, what: str) -> None:
    """Raise :class:`NonFiniteStateError` naming the non-finite tensors of ``state`` (``what`` says whose)."""
    bad = non_finite_tensors(state)
    if bad:
        raise NonFiniteStateError(f"{what} holds non-finite values (NaN or infinity) in {_listing(bad)}")


def _walk(state: Any, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(state, torch.Tensor):
        if state.is_floating_point() or state.is_complex():
            yield prefix or "<tensor>", state
    elif isinstance(state, Mapping):
        for key, value in state.items():
            yield from _walk(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            yield from _walk(value, f"{prefix}[{i}]")


def _finite(tensor: torch.Tensor) -> bool:
    return bool(torch.isfinite(tensor.detach()).all())


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f" (+{len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else "")


class StepGuard:
    """Snapshot buffers before a step; after it, roll back non-finite buffers and refuse non-finite parameters.

    Args:
        modules: ``{short name: module}``, e.g. ``{"F": fusion_net, "G": loss_generator, "T": task_network}``.
        optimizers: ``{short name: optimizer}`` whose states are checked after the step.

    Use ``with guard: step()``; afterwards :attr:`restored` lists the buffers that were non-finite and have been
    put back to their values before the step (empty when all was well).
    """

    def __init__(self, modules: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer]) -> None:
        self.modules = dict(modules)
        self.optimizers = dict(optimizers)
        self.restored: list[str] = []
        self._saved: dict[str, torch.Tensor] = {}

    def _buffers(self) -> Iterator[tuple[str, torch.Tensor]]:
        seen: set[int] = set()
        for owner, module in self.modules.items():
            for name, buf in module.named_buffers():
                if id(buf) not in seen:  # a module shared by two owners (the discriminative ablation)
                    seen.add(id(buf))
                    yield f"{owner}.{name}", buf

    def __enter__(self) -> StepGuard:
        self.restored = []
        self._saved = {name: buf.detach().clone() for name, buf in self._buffers()}
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        bad = [name for name, buf in self._buffers() if buf.is_floating_point() and not _finite(buf)]
        if bad:  # roll every buffer back (counters too), as if the step had not run
            with torch.no_grad():
                for name, buf in self._buffers():
                    buf.copy_(self._saved[name])
            self.restored = bad
        self._saved = {}
        if exc_type is None:  # a step that raised (e.g. the bad-step limit) has its buffers restored, nothing more
            self.check_parameters()

    def check_parameters(self) -> None:
        """Raise :class:`NonFiniteStateError` if a parameter or optimizer state of the guarded objects is non-finite."""
        bad = [
            f"{owner}.{name}"
            for owner, module in self.modules.items()
            for name, p in module.named_parameters()
            if not _finite(p)
        ]
        for owner, opt in self.optimizers.items():
            bad += non_finite_tensors(opt.state_dict()["state"], prefix=f"optimizer {owner}")
        if bad:
            raise NonFiniteStateError(
                f"non-finite values (NaN or infinity) in {_listing(bad)} after a step with finite losses and "
                "gradients (a learning rate too large or infinite?)"
            )
