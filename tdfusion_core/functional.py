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


@contextmanager
def substituted_parameters(module: nn.Module, params: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Within the block, ``module``'s parameters or buffers named in ``params`` are replaced by the given tensors.

    Names are those of ``module.named_parameters()`` / ``named_buffers()``; an alias of a shared submodule sees the
    substitution too (it is the same slot). Unknown names raise ``KeyError`` naming them.
    """
    saved: list[tuple[dict[str, Any], str, Any]] = []
    seen: set[tuple[int, str]] = set()
    try:
        for name, tensor in params.items():
            owner_name, _, attr = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            if attr in owner._parameters:
                slots = cast(dict[str, Any], owner._parameters)
            elif attr in owner._buffers:
                slots = cast(dict[str, Any], owner._buffers)
            else:
                raise KeyError(f"{type(module).__name__} has no parameter or buffer named {name!r}")
            key = (id(slots), attr)
            if key in seen:
                continue
            seen.add(key)
            saved.append((slots, attr, slots[attr]))
            slots[attr] = tensor
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
