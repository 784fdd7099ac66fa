"""``OpenMMLabTask``: what the mmseg and mmdet tasks share (config, build, weights, input kind).

A subclass names its framework (:attr:`OpenMMLabTask.package`), its network wrapper
(:attr:`OpenMMLabTask.network_class`), its default config and how to read the class count off a built model; the
loss, evaluation and targets are its own.

Input: ``input_kind="rgb"`` feeds the RGB image rebuilt by core, normalised as the config's data preprocessor says;
``input_kind="luminance"`` feeds the fused Y ``(B, 1, H, W)`` in [0, 1] to a one-channel first convolution / patch
embedding (:mod:`tdfusion_openmmlab.luminance`), without ImageNet mean / std, as the released TDFusion code does.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar

import torch.nn as nn

from tdfusion_core.kernel.task import Task
from tdfusion_openmmlab.glue import (
    NormalizedModel,
    build_model,
    import_openmmlab,
    load_weights,
    preprocessor_settings,
    resolve_config,
    sanitize_model_config,
    set_num_classes,
)
from tdfusion_openmmlab.luminance import convert_first_conv, set_config_in_channels
from tdfusion_openmmlab.readiness import ensure_ready

INPUT_KINDS = ("luminance", "rgb")


class OpenMMLabTask(Task):
    """Base of the OpenMMLab tasks. Options common to all of them (keyword arguments, also from a run's YAML):

    config: a config file path, the name of a config shipped with the framework, or a dict (a full config with
        ``model`` or a model dict); default :meth:`default_config`.
    cfg_options: mmengine-style dotted overrides, e.g. ``{"model.decode_head.channels": 128}``.
    input_kind: ``"rgb"`` or ``"luminance"`` (one input channel, no mean / std); default :attr:`input_kind`.
    size_divisor: pad the input to a multiple of this (default: the config's, at least :attr:`min_size_divisor`).
    unfreeze: release ``frozen_stages`` / ``norm_eval`` when no pretrained weights are loaded (default True).

    ``num_classes`` (from the dataset) sets every head's class count; ``None`` keeps the config's. ``checkpoint``
    loads local weights (OpenMMLab checkpoints or state dicts; heads of another class count skipped). Creating the
    task checks that the framework can be imported here and otherwise raises
    :class:`~tdfusion_openmmlab.readiness.OpenMMLabNotReadyError` with the install line.
    """

    #: the OpenMMLab framework: ``"mmseg"`` or ``"mmdet"``
    package: ClassVar[str] = ""
    #: the wrapper that puts the input preparation in the graph and gives the task's forward / loss
    network_class: ClassVar[type[NormalizedModel]] = NormalizedModel
    #: the smallest padding multiple (detectors need their largest FPN stride)
    min_size_divisor: ClassVar[int] = 1
    #: what the task calls its kind of model in error messages
    model_kind: ClassVar[str] = "model"

    def __init__(
        self,
        num_classes: int | None = None,
        checkpoint: str | Path | None = None,
        lr: float = 1e-4,
        config: Any = None,
        input_kind: str | None = None,
        **options: Any,
    ) -> None:
        ensure_ready(self.package)
        if input_kind is not None:
            if input_kind not in INPUT_KINDS:
                raise ValueError(f"input_kind must be 'luminance' or 'rgb', not {input_kind!r}")
            self.input_kind = input_kind  # type: ignore[assignment,unused-ignore]
        super().__init__(num_classes=num_classes, checkpoint=checkpoint, lr=lr, **options)
        self.config["config"] = self.resolve_config_name(config if config is not None else self.default_config())
        self.config["input_kind"] = self.input_kind

    # ------------------------------------------------------------------ what subclasses say
    @abc.abstractmethod
    def default_config(self) -> Any:
        """The config used when none is given."""

    def resolve_config_name(self, config: Any) -> Any:
        """Map a short name to a config (the identity by default; mmdet maps its model-zoo names)."""
        return config

    @abc.abstractmethod
    def model_num_classes(self, model: nn.Module) -> int:
        """The class count of a built OpenMMLab model (read when ``num_classes`` was not given)."""

    # ------------------------------------------------------------------ shared building
    @property
    def in_channels(self) -> int:
        """Input channels of the network: 1 for ``"luminance"``, 3 for ``"rgb"``."""
        return 1 if self.input_kind == "luminance" else 3

    def model_config(self) -> dict[str, Any]:
        """The sanitised model config that :meth:`build_network` builds (offline, one process, class count set,
        ``in_channels=1`` on the backbone for luminance where the backbone takes it)."""
        import_openmmlab(self.package)
        full = resolve_config(self.package, self.config["config"], self.config.get("cfg_options"))
        model = full["model"]
        sanitize_model_config(model, unfreeze=bool(self.config.get("unfreeze", True)))
        if self.num_classes is not None and set_num_classes(model, int(self.num_classes)) == 0:
            raise ValueError(f"the model config has no 'num_classes' to set (is it a {self.model_kind}?)")
        if self.input_kind == "luminance" and isinstance(model.get("backbone"), dict):
            set_config_in_channels(model["backbone"], self._backbone_class(model["backbone"]))
        return model

    def _backbone_class(self, backbone_cfg: dict[str, Any]) -> type:
        import importlib

        from mmengine.registry import DefaultScope

        registry = importlib.import_module(f"{self.package}.registry").MODELS
        with DefaultScope.overwrite_default_scope(self.package):
            cls = registry.get(backbone_cfg["type"])
        if cls is None:
            raise ValueError(f"unknown backbone type {backbone_cfg['type']!r} in the {self.package} registry")
        return cls

    def build_network(self) -> nn.Module:
        model_cfg = self.model_config()
        settings = preprocessor_settings(model_cfg)
        divisor = self.config.get("size_divisor")
        settings["size_divisor"] = (
            int(divisor) if divisor is not None else max(self.min_size_divisor, settings["size_divisor"])
        )
        model = build_model(self.package, model_cfg)
        if self.input_kind == "luminance" and model_cfg.get("backbone", {}).get("in_channels") != 1:
            convert_first_conv(model.backbone)
        if self.num_classes is None:
            self.num_classes = self.model_num_classes(model)
        return self.network_class(model, in_channels=self.in_channels, **settings)

    def load_checkpoint(self, network: nn.Module, path: Path) -> None:
        """Load OpenMMLab checkpoints or state dicts (keys with or without the ``model.`` prefix)."""
        load_weights(network, path)  # type: ignore[arg-type]
