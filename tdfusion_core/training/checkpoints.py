"""Inference checkpoints: our documented format, and import of the published ReFusion/TDFusion state dicts.

Format (version 1)
------------------
A file written by :func:`torch.save` holding only dicts, lists, strings, numbers, booleans, ``None`` and tensors, so
it loads with ``torch.load(weights_only=True)``: no code in the file is ever executed. Its top level is::

    {
        "format": "tdfusion-checkpoint",
        "version": 1,                         # FORMAT_VERSION of the writer
        "tdfusion_version": "0.1.0",          # package version of the writer (informative)
        "num_sources": 2,                     # K: the networks take (B, K, H, W)
        "fusion": {"arch": "refusion", "config": {...}, "state_dict": {name: tensor}},
        "loss_generator": None or {"arch": "lpn", "config": {...}, "state_dict": {...}},
        "extra": {...},                       # free-form metadata (epoch, dataset, metrics, ...)
    }

``arch`` is a name in the fusion-net (loss-generator) registry and ``config`` the keyword configuration passed to its
factory together with ``num_sources``; tensors are stored on the CPU. Loading builds the networks through the
registry (so any plugin architecture works) and loads the weights with strict key and shape checks; tensors holding
NaN or infinity are refused both when saving and when loading. Files are written atomically and durably
(:func:`tdfusion_core.common.atomic.atomic_write`: a temporary file in the same folder, fsync, :func:`os.replace`, fsync of
the folder), so a crash never leaves a half-written checkpoint under the final name.

Published weights
-----------------
:func:`load_model_checkpoint` also accepts the state dicts published with ReFusion (``ReFusion_IVIF.pth``) and
TDFusion (``TDFusion_MSRS.pth`` ...; its ``test.py`` loads them with ``ReFusion().load_state_dict(torch.load(p))``,
so they are plain ``ReFusion`` state dicts). The reference's ``MetaConv2d`` registers each convolution weight twice,
as ``X.weight`` and ``X.conv.weight``; the ``conv`` copies are folded into ``X.weight``. A ``module.`` prefix (left by
``torch.nn.DataParallel``, which the reference's training script wraps the loss generator in) is removed. The
architecture's configuration (width, depth, heads, expansion, bias, number of sources) is read off the tensor shapes.
A dict holding several such state dicts under any names (one fusion network, at most one loss generator) is accepted
too; the reference's own scripts never write one, so that case is recognised by key names only.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from tdfusion_core.common.atomic import atomic_save
from tdfusion_core.common.torch_files import CheckpointError, read_torch_file
from tdfusion_core.training.state_guard import non_finite_tensors

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
    "ModelCheckpoint",
    "atomic_save",
    "check_state_fits",
    "convert_reference_state_dict",
    "load_model_checkpoint",
    "read_torch_file",
    "save_model_checkpoint",
    "unwrap_module",
]

FORMAT = "tdfusion-checkpoint"
FORMAT_VERSION = 1
_MAX_LISTED = 12


@attrs.define
class ModelCheckpoint:
    """Networks and metadata loaded by :func:`load_model_checkpoint`.

    Attributes:
        fusion_net: the fusion network, built through the registry, weights loaded, in eval mode.
        fusion_arch: its registered architecture name (``"refusion"`` for published weights).
        fusion_config: the keyword configuration it was built with.
        num_sources: K, the number of sources the networks take.
        loss_generator: the loss generator, or ``None`` when the checkpoint has none.
        lossgen_arch: its architecture name, or ``None``.
        lossgen_config: its configuration, or ``None``.
        version: format version of the file (published state dicts count as version 0).
        extra: free-form metadata stored with the checkpoint (empty for published state dicts).
        source_format: ``"tdfusion"`` for our format, ``"reference"`` for a published ReFusion/TDFusion state dict.
    """

    fusion_net: nn.Module
    fusion_arch: str
    fusion_config: dict[str, Any]
    num_sources: int = 2
    loss_generator: nn.Module | None = None
    lossgen_arch: str | None = None
    lossgen_config: dict[str, Any] | None = None
    version: int = FORMAT_VERSION
    extra: dict[str, Any] = attrs.field(factory=dict)
    source_format: str = "tdfusion"


# ----------------------------------------------------------------------------------------------------------- saving


def _check_plain(value: Any, where: str, allow_tensors: bool) -> None:
    """Refuse values that ``torch.load(weights_only=True)`` could not load or that are not plain data."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, torch.Tensor):
        if allow_tensors:
            return
        raise CheckpointError(f"{where} holds a tensor; configurations must be plain data (numbers, strings, lists)")
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]", allow_tensors)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CheckpointError(f"{where} has a non-string key {key!r}")
            _check_plain(item, f"{where}[{key!r}]", allow_tensors)
        return
    raise CheckpointError(
        f"{where} holds a {type(value).__name__}, which a checkpoint cannot store (it must load without executing "
        "code): use numbers, strings, booleans, None, lists, dicts" + (" or tensors" if allow_tensors else "")
    )


def plain_containers(value: Any) -> Any:
    """Tuples to lists and mappings to dicts, recursively (what the file will hand back)."""
    if isinstance(value, Mapping):
        return {k: plain_containers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_containers(v) for v in value]
    return value


def unwrap_module(module: nn.Module) -> nn.Module:
    """The plain module inside ``DataParallel``/``DistributedDataParallel`` and ``torch.compile`` wrappers.

    Their state dicts carry ``module.``/``_orig_mod.`` prefixes that the registered architecture does not have.
    """
    while True:
        if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod  # type: ignore[assignment]
        else:
            return module


def _cpu_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu() for name, tensor in unwrap_module(module).state_dict().items()}


def _section(kind: str, module: nn.Module, arch: str, config: Mapping[str, Any], num_sources: int) -> dict[str, Any]:
    from tdfusion_core.plugin import registry

    if not isinstance(arch, str) or not arch:
        raise CheckpointError(f"{kind} architecture must be a registered name, got {arch!r}")
    _check_plain(dict(config), f"{kind} config", allow_tensors=False)
    state = _cpu_state_dict(module)
    bad = non_finite_tensors(state)
    if bad:
        raise CheckpointError(
            f"the {kind.replace('_', ' ')} holds non-finite values (NaN or infinity) in {', '.join(bad[:8])}; "
            "a model that outputs NaN is not saved"
        )
    # Build the declared architecture now, so a wrong name or configuration fails at save time, not at load time.
    reference = registry.lookup(kind, arch)(num_sources=num_sources, **dict(config))
    _check_fit(reference, state, f"{kind} {arch!r} {dict(config)}", "the module being saved")
    return {"arch": arch, "config": plain_containers(dict(config)), "state_dict": state}


def save_model_checkpoint(
    path: str | Path,
    *,
    fusion_net: nn.Module,
    fusion_arch: str,
    fusion_config: dict[str, Any],
    loss_generator: nn.Module | None = None,
    lossgen_arch: str | None = None,
    lossgen_config: dict[str, Any] | None = None,
    num_sources: int = 2,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write an inference checkpoint in our format (see the module docstring), atomically.

    ``fusion_arch``/``lossgen_arch`` must be registered names and ``*_config`` the factory keywords that rebuild the
    modules: this is checked now by building them and comparing state-dict keys and shapes. Configurations must be
    plain data; ``extra`` may also hold tensors. Modules wrapped by ``DataParallel``, ``DistributedDataParallel`` or
    ``torch.compile`` are saved as the plain module inside.
    """
    net_sources = getattr(unwrap_module(fusion_net), "num_sources", num_sources)
    if net_sources != num_sources:
        raise CheckpointError(f"num_sources={num_sources} but the fusion network takes {net_sources} sources")
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "tdfusion_version": _package_version(),
        "num_sources": int(num_sources),
        "fusion": _section("fusion_net", fusion_net, fusion_arch, fusion_config, num_sources),
        "loss_generator": None,
        "extra": {},
    }
    if loss_generator is not None:
        if lossgen_arch is None:
            raise CheckpointError("a loss generator needs lossgen_arch (its registered architecture name)")
        payload["loss_generator"] = _section(
            "loss_generator", loss_generator, lossgen_arch, lossgen_config or {}, num_sources
        )
    if extra:
        _check_plain(extra, "extra", allow_tensors=True)
        payload["extra"] = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in extra.items()}
    atomic_save(payload, path)


def _package_version() -> str:
    from tdfusion_core import __version__

    return __version__


# ---------------------------------------------------------------------------------------------------------- loading


def _check_fit(module: nn.Module, state: Mapping[str, torch.Tensor], what: str, source: str) -> None:
    """Raise :class:`CheckpointError` naming missing/unexpected keys and shape mismatches of ``state`` vs ``module``."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: {tuple(state[k].shape)} in the checkpoint, {tuple(v.shape)} in the model"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return

    def listing(label: str, items: list[str]) -> str:
        shown = ", ".join(items[:_MAX_LISTED])
        more = f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
        return f"\n  {label} ({len(items)}): {shown}{more}"

    message = f"{source} does not fit {what}:"
    if missing:
        message += listing("missing keys", missing)
    if unexpected:
        message += listing("unexpected keys", unexpected)
    if shapes:
        message += listing("shape mismatches", shapes)
    raise CheckpointError(message)


def check_state_fits(module: nn.Module, state: Mapping[str, torch.Tensor], what: str, source: str) -> None:
    """Raise :class:`CheckpointError` naming missing/unexpected keys and each tensor whose shape differs
    (``name: (shape) in the checkpoint, (shape) in the model``) between ``state`` and ``module``."""
    _check_fit(module, state, what, source)


def _build_and_load(
    kind: str, arch: str, config: Mapping[str, Any], num_sources: int, state: Mapping[str, torch.Tensor], source: str
) -> nn.Module:
    from tdfusion_core.plugin import registry

    try:
        module: nn.Module = registry.lookup(kind, arch)(num_sources=num_sources, **dict(config))
    except TypeError as exc:
        raise CheckpointError(f"{source}: cannot build {kind} {arch!r} with config {dict(config)}: {exc}") from exc
    _check_fit(module, state, f"{kind.replace('_', ' ')} {arch!r} with config {dict(config)}", source)
    bad = non_finite_tensors(dict(state))
    if bad:
        raise CheckpointError(
            f"{source}: the {kind.replace('_', ' ')} holds non-finite values (NaN or infinity) in "
            f"{', '.join(bad[:8])}{' ...' if len(bad) > 8 else ''}; it would output NaN, so it is refused"
        )
    module.load_state_dict(dict(state), strict=True)
    return module.eval()


def _torch_load(path: Path, map_location: Any) -> Any:
    return read_torch_file(path, map_location)


def _move(module: nn.Module | None, map_location: Any) -> None:
    if module is not None and isinstance(map_location, (str, torch.device)):
        module.to(torch.device(map_location))


def load_model_checkpoint(path: str | Path, map_location: Any = "cpu") -> ModelCheckpoint:
    """Load a checkpoint in our format or a published ReFusion/TDFusion state dict (see the module docstring).

    Nothing in the file is executed (``torch.load(weights_only=True)``). The networks are built through the
    registry, loaded strictly, put in eval mode and, when ``map_location`` is a device, moved there.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: unreadable file, unknown content, a newer format version, or weights that do not fit the
            architecture (the message names the missing and unexpected keys and any shape mismatches).
        tdfusion_core.plugin.registry.RegistryError: the checkpoint names an architecture no installed plugin registers.
    """
    path = Path(path)
    obj = _torch_load(path, map_location)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        ckpt = _from_ours(obj, path)
    elif isinstance(obj, Mapping):
        ckpt = _from_reference(obj, path)
    else:
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a tdfusion checkpoint or a state dict")
    _move(ckpt.fusion_net, map_location)
    _move(ckpt.loss_generator, map_location)
    return ckpt


def _from_ours(obj: Mapping[str, Any], path: Path) -> ModelCheckpoint:
    version = obj.get("version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: invalid format version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} is format version {version}, written by tdfusion {obj.get('tdfusion_version', '?')}; this "
            f"tdfusion reads versions up to {FORMAT_VERSION}. Upgrade tdfusion-core."
        )
    try:
        num_sources = int(obj["num_sources"])
        fusion = obj["fusion"]
        fusion_arch, fusion_config, fusion_state = fusion["arch"], dict(fusion["config"]), fusion["state_dict"]
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: malformed tdfusion checkpoint, missing {exc}") from exc
    fusion_net = _build_and_load("fusion_net", fusion_arch, fusion_config, num_sources, fusion_state, str(path))
    lossgen = obj.get("loss_generator")
    loss_generator = lossgen_arch = lossgen_config = None
    if lossgen is not None:
        lossgen_arch, lossgen_config = lossgen["arch"], dict(lossgen["config"])
        loss_generator = _build_and_load(
            "loss_generator", lossgen_arch, lossgen_config, num_sources, lossgen["state_dict"], str(path)
        )
    return ModelCheckpoint(
        fusion_net=fusion_net,
        fusion_arch=fusion_arch,
        fusion_config=fusion_config,
        num_sources=num_sources,
        loss_generator=loss_generator,
        lossgen_arch=lossgen_arch,
        lossgen_config=lossgen_config,
        version=version,
        extra=dict(obj.get("extra") or {}),
        source_format="tdfusion",
    )


# ------------------------------------------------------------------------------------- published (reference) format


def convert_reference_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a reference (ReFusion/TDFusion) state dict onto our parameter names.

    Drops the ``module.`` prefix of ``DataParallel`` and folds the duplicated ``X.conv.weight``/``X.conv.bias``
    entries of ``MetaConv2d`` into ``X.weight``/``X.bias``. In the published files the twins are the same tensor;
    should they ever differ, the ``conv`` copy wins, since the reference's plain forward pass uses it. Keys without a
    twin are kept as they are.
    """
    keys = list(state)
    if keys and all(k.startswith("module.") for k in keys):
        state = {k[len("module.") :]: v for k, v in state.items()}
    out: dict[str, torch.Tensor] = dict(state)
    for key in list(state):
        for leaf in ("weight", "bias"):
            suffix = f".conv.{leaf}"
            if key.endswith(suffix):
                twin = key[: -len(suffix)] + f".{leaf}"
                if twin in state:
                    out[twin] = state[key]
                    del out[key]
    return out


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    k = 0
    while pattern.format(k + 1) in state:
        k += 1
    return k


def _blocks(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    return len({key[len(prefix) :].split(".", 1)[0] for key in state if key.startswith(prefix)})


def _ffn_factor(state: Mapping[str, torch.Tensor], key: str, dim: int) -> float | int:
    if key not in state or dim <= 0:
        return 2
    factor = state[key].shape[0] / 2 / dim
    return int(factor) if float(factor).is_integer() else factor


def _has_conv_bias(state: Mapping[str, torch.Tensor]) -> bool:
    return any(k.endswith(".bias") and ".body." not in k for k in state)


def _infer_refusion(state: Mapping[str, torch.Tensor]) -> tuple[int, dict[str, Any]]:
    """Number of sources and ``FusionNet`` configuration read off a (converted) ReFusion state dict."""
    num_sources = max(_count(state, "project_in_{}.weight"), 2)
    dim = int(state["project_in_1.weight"].shape[0]) if "project_in_1.weight" in state else 16
    config: dict[str, Any] = {
        "dim": dim,
        "num_blocks": max(_blocks(state, "encoder1."), 1),
        "heads": int(state["encoder1.0.attn.temperature"].shape[0]) if "encoder1.0.attn.temperature" in state else 8,
        "ffn_expansion_factor": _ffn_factor(state, "encoder1.0.ffn.project_in.weight", dim),
        "bias": _has_conv_bias(state),
    }
    return num_sources, config


def _infer_lpn(state: Mapping[str, torch.Tensor]) -> tuple[int, dict[str, Any]]:
    """Number of sources and ``LossGenerator`` configuration read off a (converted) LPN state dict."""
    num_sources = max(_count(state, "patch_embed{}.weight"), 2)
    dim = int(state["patch_embed1.weight"].shape[0])
    joint = f"encoder{num_sources + 1}.0.attn.temperature"
    heads = int(state["encoder1.0.attn.temperature"].shape[0]) if "encoder1.0.attn.temperature" in state else 8
    config: dict[str, Any] = {
        "dim": dim,
        "num_blocks": max(_blocks(state, "encoder1."), 1),
        "heads": heads,
        "joint_heads": int(state[joint].shape[0]) if joint in state else heads,
        "ffn_expansion_factor": _ffn_factor(state, "encoder1.0.ffn.project_in.weight", dim),
        "bias": _has_conv_bias(state),
    }
    return num_sources, config


def _is_lpn(state: Mapping[str, torch.Tensor]) -> bool:
    return "patch_embed1.weight" in state and "project_in_1.weight" not in state


def _from_reference(obj: Mapping[str, Any], path: Path) -> ModelCheckpoint:
    if _is_tensor_dict(obj):
        states = [convert_reference_state_dict(obj)]
    else:
        states = [convert_reference_state_dict(v) for v in obj.values() if _is_tensor_dict(v)]
        if not states:
            shown = ", ".join(map(str, list(obj)[:_MAX_LISTED]))
            raise CheckpointError(
                f"{path} is neither a tdfusion checkpoint (no 'format': {FORMAT!r}) nor a ReFusion/TDFusion state "
                f"dict; its top-level keys are: {shown}"
            )
    lossgens = [s for s in states if _is_lpn(s)]
    fusions = [s for s in states if not _is_lpn(s)]
    if not fusions:
        raise CheckpointError(f"{path} holds a loss generator (LPN) state dict but no fusion network")
    if len(fusions) > 1 or len(lossgens) > 1:
        raise CheckpointError(
            f"{path} holds {len(fusions)} fusion-network and {len(lossgens)} loss-generator state dicts; "
            "expected one fusion network and at most one loss generator"
        )
    num_sources, fusion_config = _infer_refusion(fusions[0])
    source = f"{path} (read as a published ReFusion/TDFusion state dict)"
    fusion_net = _build_and_load("fusion_net", "refusion", fusion_config, num_sources, fusions[0], source)
    loss_generator = lossgen_config = None
    if lossgens:
        lg_sources, lossgen_config = _infer_lpn(lossgens[0])
        if lg_sources != num_sources:
            raise CheckpointError(
                f"{path}: the fusion network takes {num_sources} sources but the loss generator {lg_sources}"
            )
        loss_generator = _build_and_load("loss_generator", "lpn", lossgen_config, num_sources, lossgens[0], source)
    return ModelCheckpoint(
        fusion_net=fusion_net,
        fusion_arch="refusion",
        fusion_config=fusion_config,
        num_sources=num_sources,
        loss_generator=loss_generator,
        lossgen_arch="lpn" if lossgens else None,
        lossgen_config=lossgen_config,
        version=0,
        extra={},
        source_format="reference",
    )
