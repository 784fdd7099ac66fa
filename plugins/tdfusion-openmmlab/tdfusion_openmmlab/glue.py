"""Glue shared by the tdfusion-mmseg and tdfusion-mmdet plugins: configs, offline building, in-graph normalisation.

* :func:`import_openmmlab` installs the mmcv fallback (:mod:`tdfusion_mmcv_compat`, if needed) *before* importing
  mmseg / mmdet and registers their modules; a missing or broken install raises
  :class:`~tdfusion_openmmlab.readiness.OpenMMLabNotReadyError` with the install line.
* :func:`resolve_config` turns a config given as a path, a name of a config shipped inside the pip wheel
  (``<package>/.mim/configs``), an :class:`mmengine.config.Config` or a plain dict into a model config.
* :func:`sanitize_model_config` makes that config buildable offline and on one process: download-only weights
  (``pretrained`` / ``init_cfg`` of type ``Pretrained`` whose checkpoint is not a local file) are removed, SyncBN
  becomes BN, and when no pretrained weights remain, frozen stages and frozen BatchNorm statistics are released
  (freezing randomly initialised layers would only hurt training).
* :class:`NormalizedModel` wraps the OpenMMLab model with the data preprocessor's mean / std / channel order /
  padding applied *in the graph*, so the task loss stays differentiable with respect to the fused image. The
  OpenMMLab data preprocessor itself is never called. With one input channel (the fused luminance, as the released
  TDFusion networks take it) the image goes in as it is, in [0, 1], only padded.
* :func:`load_weights` loads local checkpoints; a 3-channel first convolution is summed over its input channels
  into a 1-channel one (:func:`tdfusion_openmmlab.luminance.rgb_to_luminance_weight`).
"""

from __future__ import annotations

import copy
import importlib
import logging
import warnings
from collections.abc import Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as nnf
from tdfusion_mmcv_compat import MmcvNotInstalledError, install

from tdfusion_core.common.torch_files import read_torch_file
from tdfusion_openmmlab.luminance import is_rgb_weight_for_luminance, rgb_to_luminance_weight
from tdfusion_openmmlab.readiness import OpenMMLabNotReadyError, install_line

#: normalisation types that need a process group; replaced by plain BatchNorm on one process
SYNC_NORMS = {"SyncBN", "MMSyncBN", "NaiveSyncBN", "naiveSyncBN", "SyncBatchNorm"}


class OpenMMLabConfigError(ValueError):
    """A config that cannot be found or does not describe a model."""


def import_openmmlab(package: str) -> Any:
    """Import ``mmseg`` or ``mmdet`` with mmcv's compiled ops available (real or fallback); register its modules.

    Errors (:class:`OpenMMLabNotReadyError`, an ``ImportError``) say which install route is missing or broken.
    """
    try:
        install()
    except MmcvNotInstalledError as exc:
        raise OpenMMLabNotReadyError(f"mmcv is not installed (needed by {package}): {install_line(package)}") from exc
    try:
        module = importlib.import_module(package)
        utils = importlib.import_module(f"{package}.utils")
    except ImportError as exc:
        text = str(exc)
        hint = ""
        if "_ext" in text or "undefined symbol" in text:
            hint = (
                " The compiled mmcv extension did not load (built for another torch?). Rebuild mmcv from source for "
                "this torch, or set TDFUSION_MMCV_FALLBACK=force to use the pure-PyTorch fallback ops."
            )
        elif "ftfy" in text or "regex" in text:
            hint = " mmseg's import also needs `pip install ftfy regex`."
        else:
            hint = f" Install it with: {install_line(package)}"
        raise OpenMMLabNotReadyError(f"cannot import {package}: {text}.{hint}") from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        utils.register_all_modules(init_default_scope=False)
    return module


def config_root(package: str) -> Path:
    """Folder of the configs shipped inside the ``package`` wheel (``mmseg/.mim/configs``)."""
    module = importlib.import_module(package)
    return Path(module.__file__).resolve().parent / ".mim" / "configs"


def find_config(package: str, name: str) -> Path:
    """Path of a config given as a file path or by name (``"segformer/segformer_mit-b0_..."`` or the bare stem)."""
    path = Path(name).expanduser()
    if path.suffix in (".py", ".json", ".yaml", ".yml") and path.is_file():
        return path
    root = config_root(package)
    stem = name[:-3] if name.endswith(".py") else name
    direct = root / f"{stem}.py"
    if direct.is_file():
        return direct
    matches = sorted(root.rglob(f"{Path(stem).name}.py")) if root.is_dir() else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise OpenMMLabConfigError(
            f"config name {name!r} is ambiguous in {root}: {', '.join(str(m.relative_to(root)) for m in matches)}"
        )
    raise OpenMMLabConfigError(
        f"no config file {name!r}, and no config of that name in the configs shipped with {package} ({root}). "
        "Pass a path to a config file, a config name such as 'segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512', "
        "or a dict."
    )


def resolve_config(package: str, config: Any, cfg_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The full config (a plain dict with a ``model`` key) from a path, shipped config name, Config or dict.

    A dict with a ``type`` key and no ``model`` key is taken as the model config itself. ``cfg_options`` are
    mmengine-style dotted overrides (``{"model.decode_head.channels": 128}``) applied last.
    """
    from mmengine.config import Config

    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
    elif isinstance(config, Mapping):
        raw = copy.deepcopy(dict(config))
        if "model" not in raw:
            if "type" not in raw:
                raise OpenMMLabConfigError("a config dict needs a 'model' key, or must be a model dict with a 'type'")
            raw = {"model": raw}
        cfg = Config(raw)
    elif isinstance(config, (str, Path)):
        cfg = Config.fromfile(str(find_config(package, str(config))))
    else:
        raise OpenMMLabConfigError(f"unsupported config {config!r}: give a path, a config name or a dict")
    if cfg_options:
        cfg.merge_from_dict(dict(cfg_options))
    if "model" not in cfg:
        raise OpenMMLabConfigError(f"the config has no 'model' entry (keys: {', '.join(cfg.keys())})")
    return _to_plain(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg))


def _to_plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_plain(v) for v in value]
    return value


def _is_local_file(checkpoint: Any) -> bool:
    if not isinstance(checkpoint, (str, Path)):
        return False
    text = str(checkpoint)
    if "://" in text:
        return text.startswith("file://") and Path(text[len("file://") :]).is_file()
    return Path(text).expanduser().is_file()


def sanitize_model_config(model: MutableMapping[str, Any], unfreeze: bool = True) -> bool:
    """Make a model config buildable offline on one process (in place); returns whether local weights remain.

    Removes ``pretrained`` and ``init_cfg`` entries of type ``Pretrained`` that do not point to a local file,
    replaces synchronised BatchNorm by ``BN``, and (``unfreeze``) when no pretrained weights remain sets
    ``frozen_stages=-1`` and ``norm_eval=False`` wherever the config froze them.
    """
    kept: list[str] = []
    _sanitize(model, kept)
    if unfreeze and not kept:
        _unfreeze(model)
    return bool(kept)


def _sanitize(node: Any, kept: list[str]) -> None:
    if isinstance(node, list):
        for item in node:
            _sanitize(item, kept)
        return
    if not isinstance(node, MutableMapping):
        return
    if node.get("type") in SYNC_NORMS:
        node["type"] = "BN"
    if "pretrained" in node and isinstance(node["pretrained"], (str, Path)):
        if _is_local_file(node["pretrained"]):
            kept.append(str(node["pretrained"]))
        else:
            node["pretrained"] = None
    if "init_cfg" in node:
        node["init_cfg"] = _filter_init_cfg(node["init_cfg"], kept)
    for key, value in list(node.items()):
        if key != "init_cfg":
            _sanitize(value, kept)


def _filter_init_cfg(init_cfg: Any, kept: list[str]) -> Any:
    if isinstance(init_cfg, list):
        items = [_filter_init_cfg(item, kept) for item in init_cfg]
        items = [item for item in items if item is not None]
        return items or None
    if isinstance(init_cfg, MutableMapping) and init_cfg.get("type") == "Pretrained":
        checkpoint = init_cfg.get("checkpoint")
        if _is_local_file(checkpoint):
            kept.append(str(checkpoint))
            return init_cfg
        return None
    return init_cfg


def _unfreeze(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _unfreeze(item)
        return
    if not isinstance(node, MutableMapping):
        return
    if isinstance(node.get("frozen_stages"), int) and node["frozen_stages"] >= 0:
        node["frozen_stages"] = -1
    if node.get("norm_eval") is True:
        node["norm_eval"] = False
    for value in node.values():
        _unfreeze(value)


def set_num_classes(model: MutableMapping[str, Any], num_classes: int, skip: Iterable[str] = ("rpn_head",)) -> int:
    """Set every ``num_classes`` of the model config (heads, auxiliary heads) except under ``skip``; returns count."""
    count = 0

    def visit(node: Any) -> None:
        nonlocal count
        if isinstance(node, list):
            for item in node:
                visit(item)
        elif isinstance(node, MutableMapping):
            if "num_classes" in node:
                node["num_classes"] = int(num_classes)
                count += 1
            for key, value in node.items():
                if key not in skip:
                    visit(value)

    visit(model)
    return count


def build_model(package: str, model_cfg: Mapping[str, Any], init_weights: bool = True) -> nn.Module:
    """Build the model with ``package``'s registry (scope forced to ``package``) and run its own initialisation.

    Shared submodules are then given one module object per path (:func:`unalias_shared_modules`), so that the
    functional evaluation of T' never leaves substituted weights behind.
    """
    from mmengine.config import ConfigDict
    from mmengine.registry import DefaultScope

    import_openmmlab(package)
    registry = importlib.import_module(f"{package}.registry").MODELS
    # ConfigDict: OpenMMLab models read nested options by attribute (``self.test_cfg.mode``)
    cfg = ConfigDict(copy.deepcopy(dict(model_cfg)))
    from mmengine.logging import MMLogger

    # init_weights() prints one INFO record per parameter when the logger has no file handler
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with DefaultScope.overwrite_default_scope(package):
                model = registry.build(cfg)
                if init_weights and hasattr(model, "init_weights"):
                    model.init_weights()
    finally:
        logger.setLevel(level)
    unalias_shared_modules(model)
    return model


def unalias_shared_modules(root: nn.Module) -> list[str]:
    """Give every path to a shared submodule its own module object that shares the same ``Parameter`` objects.

    Some heads reuse one module under several names (RTMDet's ``share_conv`` assigns ``cls_convs[0][i].conv`` to
    every level). ``torch.func.functional_call`` swaps tensors in by name and restores them in the same order, so
    with two names for one attribute slot the substituted tensor stays in the network afterwards (T would silently
    take T''s weights). After this, each name has its own slot, the parameters stay tied (same objects, counted once
    by ``parameters()``), and ``functional_call`` substitutes and restores every alias. Returns the re-homed paths.
    """
    seen: set[int] = set()
    rehomed: list[str] = []

    def visit(module: nn.Module, prefix: str) -> None:
        for key, child in list(module._modules.items()):
            if child is None:
                continue
            path = f"{prefix}{key}"
            if id(child) in seen:
                shell = copy.copy(child)
                shell._parameters = dict(child._parameters)  # the same Parameter objects: weights stay tied
                shell._buffers = dict(child._buffers)
                shell._modules = dict(child._modules)
                module._modules[key] = shell
                child = shell
                rehomed.append(path)
            seen.add(id(child))
            visit(child, f"{path}.")

    seen.add(id(root))
    visit(root, "")
    return rehomed


def preprocessor_settings(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Mean, std (0–255 scale), channel order and padding divisor from the model's ``data_preprocessor`` config.

    mmseg / mmdet load images as BGR; ``bgr_to_rgb`` (or ``rgb_to_bgr``) swaps them, so the network consumes RGB
    exactly when one of the two is set. Missing mean / std mean no normalisation (YOLOX: BGR in [0, 255]).
    """
    pre = dict(model_cfg.get("data_preprocessor") or {})
    mean = pre.get("mean") or [0.0, 0.0, 0.0]
    std = pre.get("std") or [1.0, 1.0, 1.0]
    rgb = bool(pre.get("bgr_to_rgb", False) or pre.get("rgb_to_bgr", False))
    divisor = pre.get("size_divisor") or pre.get("pad_size_divisor") or 1
    return {"mean": [float(m) for m in mean], "std": [float(s) for s in std], "rgb": rgb, "size_divisor": int(divisor)}


class NormalizedModel(nn.Module):
    """An OpenMMLab model plus the input normalisation its data preprocessor would apply, done in the graph.

    With ``in_channels=3``, ``images`` are RGB in ``[0, 1]`` (what core's colour pipeline gives); :meth:`prepare`
    scales them to 0–255, reorders to BGR when the model was trained on BGR, normalises with the config's mean / std
    and pads bottom / right with zeros to a multiple of ``size_divisor`` (as the preprocessor pads after
    normalising). With ``in_channels=1`` (luminance), ``images`` are the fused Y in ``[0, 1]`` and go in unchanged
    apart from the padding, as in the released TDFusion code (no ImageNet mean / std). The model's parameters are
    named ``model.<name>``; the normalisation constants are non-persistent buffers.
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Iterable[float],
        std: Iterable[float],
        rgb: bool = True,
        size_divisor: int = 1,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (luminance) or 3 (RGB), not {in_channels}")
        self.model = model
        self.in_channels = int(in_channels)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.rgb = bool(rgb)
        self.size_divisor = max(1, int(size_divisor))

    def padding(self, height: int, width: int) -> tuple[int, int]:
        """``(pad_bottom, pad_right)`` that make ``height`` and ``width`` multiples of :attr:`size_divisor`."""
        d = self.size_divisor
        return (-height) % d, (-width) % d

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Network input ``(B, C, H', W')``: RGB normalised as the config says, or luminance as it is; padded."""
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            kind = "RGB" if self.in_channels == 3 else "luminance"
            raise ValueError(
                f"expected {kind} images (B, {self.in_channels}, H, W) in [0, 1], got shape {tuple(images.shape)}"
            )
        x = images
        if self.in_channels == 3:
            x = x * 255.0
            if not self.rgb:
                x = x.flip(1)
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        pad_h, pad_w = self.padding(int(x.shape[-2]), int(x.shape[-1]))
        if pad_h or pad_w:
            x = nnf.pad(x, (0, pad_w, 0, pad_h), value=0.0)
        return x

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, rgb={self.rgb}, size_divisor={self.size_divisor}"


def sum_losses(losses: Mapping[str, Any]) -> torch.Tensor:
    """Sum of every entry whose key contains ``"loss"`` (tensors or lists of tensors), as mmengine's parse_losses."""
    total: torch.Tensor | None = None
    for key, value in losses.items():
        if "loss" not in key:
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            term = item.sum() if item.dim() else item
            total = term if total is None else total + term
    if total is None:
        raise ValueError(f"the model returned no loss terms (keys: {', '.join(losses) or 'none'})")
    return total


def load_weights(network: NormalizedModel, path: Path) -> dict[str, list[str]]:
    """Load a local checkpoint into ``network``: a plain state dict, or an mmengine checkpoint (``state_dict``).

    Keys may be the OpenMMLab model's own (``backbone.…``) or the wrapper's (``model.backbone.…``). A first
    convolution trained on RGB is summed over its colour channels for a luminance network (the same response to a
    grey image). Other tensors whose shape differs (typically a head trained for another class count) are skipped with a
    warning. Read with :func:`tdfusion_core.common.torch_files.read_torch_file` (``weights_only=True``: no code from the file
    runs; a file that needs more is refused with how to convert one you trust). Returns the skipped / missing /
    unexpected keys.
    """
    state = read_torch_file(path, what="task checkpoint")  # one-line errors; never runs code from the file
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} does not hold a state dict")
    cleaned: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        name = name[len("model.") :] if name.startswith("model.") else name
        if isinstance(value, torch.Tensor):
            cleaned[name] = value
    own = network.model.state_dict()
    for key, value in list(cleaned.items()):
        if key in own and is_rgb_weight_for_luminance(value, own[key]):
            cleaned[key] = rgb_to_luminance_weight(value)
    mismatched = [k for k, v in cleaned.items() if k in own and own[k].shape != v.shape]
    for key in mismatched:
        cleaned.pop(key)
    if not any(k in own for k in cleaned):
        raise ValueError(f"no tensor of {path} matches the network's parameters (is it a checkpoint of this model?)")
    result = network.model.load_state_dict(cleaned, strict=False)
    report = {
        "mismatched": mismatched,
        "missing": list(result.missing_keys),
        "unexpected": list(result.unexpected_keys),
    }
    if any(report.values()):
        warnings.warn(
            f"loaded {path} partially: {len(mismatched)} tensors of another shape skipped "
            f"({', '.join(mismatched[:4])}{'…' if len(mismatched) > 4 else ''}), {len(report['missing'])} missing, "
            f"{len(report['unexpected'])} unexpected",
            stacklevel=2,
        )
    return report
