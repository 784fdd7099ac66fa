"""Calling a module with substituted parameters, safely for modules reachable under several names.

``torch.func.functional_call`` swaps each named tensor in and restores them in the same order. When one submodule is
reachable under two names (a head whose convolutions are shared across pyramid levels, say), the second swap saves
the already-substituted tensor and the restore leaves it in place: the module keeps the substituted weights after
the call. :func:`call_with_parameters` swaps each ``(owner module, attribute)`` slot exactly once, so the module is
always restored. It supports autograd and ``torch.func.jvp`` (the substituted tensors may be dual tensors).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

import torch
import torch.nn as nn


def _slots_by_tensor(module: nn.Module) -> dict[int, list[tuple[dict[str, Any], str]]]:
    """``id(tensor) -> [(slot dict, attribute), ...]`` over every distinct submodule's parameters and buffers."""
    found: dict[int, list[tuple[dict[str, Any], str]]] = {}
    for sub in module.modules():  # each module object once, however many names reach it
        for slots in (cast(dict[str, Any], sub._parameters), cast(dict[str, Any], sub._buffers)):
            for attr, tensor in slots.items():
                if tensor is not None:
                    found.setdefault(id(tensor), []).append((slots, attr))
    return found


@contextmanager
def substituted_parameters(module: nn.Module, params: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Within the block, ``module``'s parameters or buffers named in ``params`` are replaced by the given tensors.

    Names are those of ``module.named_parameters()`` / ``named_buffers()``. Every slot that holds the same tensor is
    substituted too: an alias of a shared submodule (the same slot) and a tied weight in another module (the same
    tensor), as ``torch.func.functional_call(..., tie_weights=True)`` intends. Unknown names raise ``KeyError``.
    """
    by_tensor = _slots_by_tensor(module)
    saved: list[tuple[dict[str, Any], str, Any]] = []
    seen: set[tuple[int, str]] = set()
    try:
        for name, tensor in params.items():
            owner_name, _, attr = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            current = owner._parameters.get(attr, owner._buffers.get(attr))
            if current is None:
                raise KeyError(f"{type(module).__name__} has no parameter or buffer named {name!r}")
            for slots, slot_attr in by_tensor[id(current)]:
                key = (id(slots), slot_attr)
                if key not in seen:
                    seen.add(key)
                    saved.append((slots, slot_attr, slots[slot_attr]))
                    slots[slot_attr] = tensor
        yield
    finally:
        for slots, attr, original in reversed(saved):
            slots[attr] = original


def call_with_parameters(
    module: nn.Module,
    params: Mapping[str, torch.Tensor],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any] | None = None,
) -> Any:
    """``module(*args, **kwargs)`` with parameters replaced by ``params`` (see :func:`substituted_parameters`)."""
    with substituted_parameters(module, params):
        return module(*args, **(kwargs or {}))
