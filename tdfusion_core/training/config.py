"""Training configuration: every hyper-parameter of a run in one attrs class that round-trips to YAML.

Defaults are those of the released TDFusion code: Adam at 1e-4 for F, T and G with StepLR(10, 0.1), batch 2 made
of one pair and its Switch (both source orders), 256x256 crops for the fusion loss, α = 1, 40 epochs of M = 200
meta steps, G updated by ``θG −= lr·g/max|g|``, the inner learning rate of F equal to F's current learning rate,
and T' by one real step of T's own optimizer on the pre-update F's detached output (its Adam state advances; T's
weights are put back). ``tests/test_released_port.py`` checks these defaults against a port of the released step.

``batch_size`` is the global batch (samples per step before the Switch doubles them), the same with any number of
processes: under ``torchrun`` each process takes ``batch_size × (2 if switch else 1) / world_size`` items of it
(:mod:`tdfusion_core.training.distributed`). ``tasks`` names several tasks with loss weights (:mod:`tdfusion_core.kernel.multitask`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, get_args

import attrs
import yaml

from tdfusion_core.common.sizes import optional_size
from tdfusion_core.kernel.losses import GradientForm, IntensityForm
from tdfusion_core.kernel.meta import MetaMode, TaskStepRule
from tdfusion_core.kernel.multitask import normalise_task_specs
from tdfusion_core.training.config_io import build, finite_positive, load_yaml_file
from tdfusion_core.training.distributed import MetaSync

Profile = Literal["released", "paper"]

#: what each profile sets; a setting given explicitly (constructor, YAML, ``--set``) wins over its profile
PROFILES: dict[str, dict[str, Any]] = {
    # exactly HaowenBai/TDFusion's train.py
    "released": {
        "epochs": 40,
        "intensity": "reference",
        "gradient_form": "released",
        "task_step": "adam",
        "generator_update": "maxnorm",
    },
    # the equations as printed: Eq. 2 unsquared weights, Eq. 3 gradient magnitudes, Eq. 5 SGD T', Eq. 6 plain step
    "paper": {
        "epochs": 50,
        "intensity": "paper",
        "gradient_form": "paper",
        "task_step": "sgd",
        "generator_update": "sgd",
    },
}


def _from_profile(key: str) -> Any:
    """Default of ``key``: the value the run's ``profile`` gives it (``profile`` is initialised first)."""

    def default(self: Any) -> Any:
        if self.profile not in PROFILES:
            raise ValueError(f"profile must be one of {', '.join(PROFILES)}, not {self.profile!r}")
        return PROFILES[self.profile][key]

    return attrs.Factory(default, takes_self=True)


def _size(value: Any) -> tuple[int, int] | None:
    return optional_size(value)


#: how G's meta-gradient updates G: the released ``θG −= lr·g/max|g|``, or a step of that torch optimizer
GeneratorUpdate = Literal["maxnorm", "adam", "adamw", "sgd"]
DistBackend = Literal["nccl", "gloo", "mpi", "ucc"]


def _one_of(choices: Any) -> Any:
    """attrs validator: the value is one of a ``Literal``'s choices (the type is the one list of them)."""
    return attrs.validators.in_(get_args(choices))


def _positive(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    finite_positive(attribute.name, value)  # numbers only, finite and > 0 (learning rates: no .inf, no "1e-4")


def _non_negative(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{attribute.name} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value}")


@attrs.define(kw_only=True)
class TrainConfig:
    """All settings of a training run (``tdfusion train --config run.yaml`` reads the same keys).

    ``profile`` (``released``, the default, or ``paper``) fills in ``epochs``, ``intensity``, ``gradient_form``,
    ``task_step`` and ``generator_update`` when they are not given (:data:`PROFILES`); given ones win.
    """

    #: ``released`` (HaowenBai/TDFusion's train.py) or ``paper`` (the printed equations); see PROFILES
    profile: Profile = attrs.field(default="released", validator=attrs.validators.in_(tuple(PROFILES)))
    # what to train on
    task: str = "tiny-seg"
    task_options: dict[str, Any] = attrs.field(factory=dict)
    #: several tasks at once, ``[{name, weight, options, key, target}, ...]`` (see :mod:`tdfusion_core.kernel.multitask`);
    #: when set it replaces ``task`` / ``task_options``
    tasks: list[dict[str, Any]] | None = attrs.field(default=None, converter=normalise_task_specs)
    data: str = "synthetic"
    data_options: dict[str, Any] = attrs.field(factory=dict)
    fusion_net: str = "refusion"
    fusion_options: dict[str, Any] = attrs.field(factory=dict)
    fusion_checkpoint: str | None = None
    loss_generator: str = "lpn"
    loss_generator_options: dict[str, Any] = attrs.field(factory=dict)

    # schedule (Algorithm 1)
    epochs: int = attrs.field(default=_from_profile("epochs"), validator=_positive)
    meta_steps: int = attrs.field(default=200, validator=_non_negative)
    fusion_steps: int | None = attrs.field(default=None, validator=_positive)
    batch_size: int = attrs.field(default=1, validator=_positive)
    switch: bool = True
    crop_size: tuple[int, int] | None = attrs.field(default=(256, 256), converter=_size)
    task_size: tuple[int, int] | None = attrs.field(default=None, converter=_size)

    # optimisation
    lr_fusion: float = attrs.field(default=1e-4, validator=_positive)
    lr_task: float = attrs.field(default=1e-4, validator=_positive)
    lr_generator: float = attrs.field(default=1e-4, validator=_positive)
    lr_step_size: int = attrs.field(default=10, validator=_positive)
    lr_gamma: float = attrs.field(default=0.1, validator=_positive)
    inner_lr: float | None = attrs.field(default=None, validator=_positive)
    #: T' rule: ``adam`` (released: one real step of T's optimizer, state advances), ``adam-readonly``, ``sgd``
    task_step: TaskStepRule = attrs.field(default=_from_profile("task_step"), validator=_one_of(TaskStepRule))
    generator_update: GeneratorUpdate = attrs.field(
        default=_from_profile("generator_update"), validator=_one_of(GeneratorUpdate)
    )
    #: with ``maxnorm``: largest mean change of G's weights per meta step (``None``: the released step); a guard
    #: against G collapsing (tdfusion_core.training.generator_stats.bounded_maxnorm_update, docs/experiments.md)
    generator_max_change: float | None = attrs.field(default=None, validator=_positive)
    #: log G's entropy and mean weights in both source orders (and check saturation) every N meta steps and at the
    #: last meta step of each epoch; 0: never (two extra passes of G over the crop each time)
    generator_stats_every: int = attrs.field(default=10, validator=_non_negative)
    meta_mode: MetaMode = attrs.field(default="jvp", validator=_one_of(MetaMode))

    # fusion loss
    intensity: IntensityForm = attrs.field(default=_from_profile("intensity"), validator=_one_of(IntensityForm))
    #: form of the gradient loss: `released` (Sobel x/y responses, sign kept) or `paper` (Eq. 3, gradient magnitudes)
    gradient_form: GradientForm = attrs.field(default=_from_profile("gradient_form"), validator=_one_of(GradientForm))
    alpha: float = attrs.field(default=1.0, validator=_non_negative)

    # ablations (paper Table 3)
    fixed_weights: bool = False
    task_loss_on_fusion: float = attrs.field(default=0.0, validator=_non_negative)
    separate_fusion_phase: bool = True
    discriminative: bool = False

    # run
    seed: int = 0
    deterministic: bool = False
    #: ``auto``: CUDA when present, then Apple MPS, else the CPU; or any torch device (``cpu``, ``cuda:1``)
    device: str = "auto"
    amp: bool = False
    #: train ReFusion and the LPN loss generator through their fast passes, and take the meta step's JVP from
    #: ReFusion's recorded forward (same functions: float64 outputs, gradients and JVPs equal to 1e-11;
    #: docs/benchmarks.md); false: the layers' own forwards and torch.func.jvp. Other networks are not affected
    fast_fusion_pass: bool = True
    max_bad_steps: int = attrs.field(default=10, validator=_positive)
    checkpoint_every: int = attrs.field(default=1, validator=_positive)
    log_images: bool = True
    num_workers: int = attrs.field(default=0, validator=_non_negative)
    progress: bool = True

    # validation (tdfusion_core.training.validation): T on F's fused images of a held-out split after each epoch
    #: split evaluated after each epoch: ``auto`` (``val`` when the data has one), a split name, or null (none)
    val_split: str | None = "auto"
    #: validate every N epochs (and after the last one)
    val_every: int = attrs.field(default=1, validator=_positive)
    #: fusion metrics of F's validation images (names of tdfusion_core.metrics.fusion.METRICS; [] for none)
    val_fusion_metrics: list[str] = attrs.field(factory=lambda: ["EN", "SF", "SSIM"])
    #: evaluate at most this many validation samples (the first ones; null: all)
    val_max_samples: int | None = attrs.field(default=None, validator=_positive)

    # several processes (torchrun; see tdfusion_core.training.distributed). batch_size above is the global batch.
    #: ``union``: the meta step's inner gradients, T's gradient and v are averaged too, so G's update is the exact
    #: meta-gradient of the union of the shards; ``per-shard``: only G's meta-gradients are averaged (cheaper)
    meta_sync: MetaSync = attrs.field(default="union", validator=_one_of(MetaSync))
    #: process-group backend; default NCCL on CUDA, gloo on CPU
    dist_backend: DistBackend | None = attrs.field(
        default=None, validator=attrs.validators.optional(_one_of(DistBackend))
    )
    #: convert T's BatchNorm layers to SyncBatchNorm in multi-process runs (CUDA only)
    sync_batchnorm: bool = False
    #: DistributedDataParallel's ``find_unused_parameters`` (for task networks with branches a loss skips)
    find_unused_parameters: bool = False

    def __attrs_post_init__(self) -> None:
        if self.discriminative and self.fixed_weights:
            raise ValueError("discriminative fusion needs the loss generator: it cannot be combined with fixed_weights")

    # ------------------------------------------------------------------ YAML
    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every setting (tuples as lists), suitable for YAML or JSON."""
        out = attrs.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a dict, checked: unknown keys ("did you mean ..."), wrong types (the expected type) and
        invalid values raise :class:`tdfusion_core.training.config_io.ConfigError` (a ``ValueError``) in one line."""
        config: TrainConfig = build(cls, values, source)
        return config

    def to_yaml(self, path: str | Path | None = None) -> str:
        """YAML text of the configuration; also written to ``path`` when given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Read a configuration written by :meth:`to_yaml` (or by hand; missing keys take their defaults).

        YAML 1.2 numbers (``1e-4``), no duplicate keys; errors name the file and line (see :mod:`config_io`)."""
        return cls.from_dict(load_yaml_file(path), source=str(path))

    def evolve(self, **changes: Any) -> TrainConfig:
        """Copy with some settings changed."""
        return attrs.evolve(self, **changes)
