"""Seeded experiments: methods × seeds on the same data, each cell trained, fused and scored, then compared.

A **cell** is one method at one seed:

1. *images*: a trained method (TDFusion or an ablation of the paper's Table 3) is trained with
   :class:`~tdfusion_core.training.trainer.MetaTrainer` at that seed and fuses the training and the held-out split; a fixed
   rule (per-pixel ``max`` / ``mean``), the ``oracle`` (synthetic scenes only: each object from the source that
   shows it, the mean elsewhere) or a user's folder of fused images needs no training; a single source is used as is;
2. *fusion metrics* (the paper's Table 1 set) of the held-out images against both sources;
3. the *downstream protocol* (:func:`tdfusion_core.apps.downstream.run_downstream`, the paper's Table 2): a fresh task
   network trained on the method's training images and evaluated on the held-out ones. Its initialisation and
   sample order come from the cell's seed, so seed ``s`` of every method shares them: methods are compared
   **paired** over seeds;
4. for a method with a loss generator G on synthetic scenes: the *preference score*
   (:func:`tdfusion_core.training.generator_stats.preference_scores`) in both source orders.

Every cell is written to ``<out>/cells/<method>/seed<s>.json`` as soon as it is done, with a key of everything it
depends on; a rerun skips the cells whose key matches (resumable), and reruns those whose settings changed.

The report (``report.md``, ``results.csv``, ``results.json``, ``comparison.csv`` and ``summary.png`` when
matplotlib is installed) gives mean ± 95 % confidence interval over the seeds per method and metric, and per method
the paired difference to the reference (TDFusion unless another is named) with a t interval, a bootstrap interval, a
p-value and a verdict that the interval allows (:mod:`tdfusion_core.apps.stats`).

The **budget** (:data:`BUDGETS`) sets epochs, meta and fusion steps and the downstream steps for every method
alike (and, for synthetic scenes, their number and size).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from tdfusion_core.apps.stats import mean_ci, paired_comparison, verdict

__all__ = [
    "BUDGETS",
    "Budget",
    "ExperimentSpec",
    "Method",
    "builtin_method",
    "cell_order",
    "run_experiment",
    "summarise",
]


@attrs.define(frozen=True)
class Budget:
    """What one cell may spend: the same for every method of an experiment.

    ``n_train``, ``n_test`` and ``size`` apply to synthetic scenes; ``max_images`` keeps only the first images of
    each split of a real dataset (``None``: all of them) and ``image_size`` resizes each of them on load (``(H, W)``,
    boxes scaled, masks nearest; ``None``: the original size): on a CPU, fusing and training at full resolution
    does not fit any budget.
    """

    epochs: int
    meta_steps: int
    fusion_steps: int | None
    downstream_steps: int
    downstream_batch: int = 4
    n_train: int = 32
    n_test: int = 16
    size: tuple[int, int] = (96, 128)
    crop: int | None = 64
    max_images: int | None = None
    image_size: tuple[int, int] | None = None


#: Named budgets (``--budget NAME``); ``paper`` is the released schedule (40 epochs of 200 meta steps).
BUDGETS: dict[str, Budget] = {
    "smoke": Budget(1, 2, 4, 20, n_train=8, n_test=6, size=(64, 80), crop=48, max_images=8),
    "demo": Budget(3, 10, 16, 100, n_train=24, n_test=16, size=(64, 80), crop=48, max_images=32),
    "small": Budget(5, 20, 32, 200, n_train=32, n_test=24, size=(96, 128), crop=64, max_images=64),
    "paper": Budget(40, 200, None, 2000, n_train=256, n_test=64, size=(96, 128), crop=256, max_images=None),
}


@attrs.define(frozen=True)
class Method:
    """One row of the experiment.

    ``kind``: ``train`` (TrainConfig ``changes`` on top of the experiment's), ``source`` (index ``source``),
    ``rule`` (``max`` or ``mean``), ``oracle`` or ``folder`` (``folder`` holding fused images of both splits,
    or ``<folder>/<split>/``). ``once``: run at the experiment's first seed only (a reference row, no interval).
    """

    name: str
    kind: str
    changes: dict[str, Any] = attrs.field(factory=dict)
    source: int | None = None
    rule: str | None = None
    folder: str | None = None
    once: bool = False

    def __attrs_post_init__(self) -> None:
        if self.kind not in ("train", "source", "rule", "oracle", "folder"):
            raise ValueError(f"method {self.name!r}: unknown kind {self.kind!r}")
        if self.kind == "rule" and self.rule not in ("max", "mean"):
            raise ValueError(f"method {self.name!r}: rule must be 'max' or 'mean', not {self.rule!r}")

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name).strip("_") or "method"

    @property
    def seeded(self) -> bool:
        """Whether the images themselves depend on the seed (trained methods); the downstream network always does."""
        return self.kind == "train"


_BUILTIN: dict[str, Method] = {
    "tdfusion": Method("TDFusion", "train"),
    "equivariant": Method("TDFusion (equivariant G)", "train", {"loss_generator": "lpn-equivariant"}),
    "I": Method("I: fixed ½", "train", {"fixed_weights": True}),
    "II": Method("II: no Lgrad", "train", {"alpha": 0.0}),
    "III": Method("III: Lt on F", "train", {"task_loss_on_fusion": 1.0}),
    "IV": Method("IV: no fusion phase", "train", {"separate_fusion_phase": False}),
    "V": Method("V: discriminative", "train", {"discriminative": True}),
    "ir": Method("Infrared only", "source", source=0),
    "vis": Method("Visible only", "source", source=1),
    "max": Method("Max rule", "rule", rule="max"),
    "mean": Method("Mean rule", "rule", rule="mean"),
    "oracle": Method("Oracle (upper reference)", "oracle"),
}


def builtin_method(key: str) -> Method:
    """A built-in method by key: ``tdfusion``, ``equivariant``, ``I``…``V`` (Table 3), ``ir``, ``vis``, ``max``,
    ``mean``, ``oracle``."""
    for name, method in _BUILTIN.items():
        if key == name or key.lower() == name.lower():
            return method
    raise ValueError(f"unknown method {key!r}; built-in methods: {', '.join(_BUILTIN)}")


@attrs.define
class ExperimentSpec:
    """Everything an experiment depends on. ``train_options`` are TrainConfig settings for every trained method."""

    out: Path = attrs.field(converter=Path)
    methods: list[Method]
    seeds: list[int]
    budget: Budget
    data: str = "synthetic"
    data_options: dict[str, Any] = attrs.field(factory=dict)
    train_split: str = "train"
    test_split: str = "test"
    task: str = "tiny-seg"
    task_options: dict[str, Any] = attrs.field(factory=dict)
    train_options: dict[str, Any] = attrs.field(factory=dict)
    data_seed: int = 0
    device: str = "cpu"
    fusion_metrics: tuple[str, ...] = ("EN", "SF", "SCD", "VIF", "Qabf", "SSIM")
    reference: str | None = None
    #: real data with one split (MSRS_det): the last ``holdout`` images of ``train_split`` are the held-out ones
    holdout: int | None = None

    def __attrs_post_init__(self) -> None:
        if not self.methods:
            raise ValueError("an experiment needs at least one method")
        if self.data != "synthetic" and self.holdout is None and self.train_split == self.test_split:
            raise ValueError(
                f"train and test split are both {self.train_split!r}: the held-out images would be training "
                "images; name another test split, or hold out the last N images of the split (--holdout N)"
            )
        names = [m.name for m in self.methods]
        if len(set(names)) != len(names):
            raise ValueError(f"method names repeat: {names}")
        if not self.seeds:
            raise ValueError("an experiment needs at least one seed")

    @property
    def reference_name(self) -> str:
        """The method every other one is compared with (TDFusion when present, else the first)."""
        if self.reference is not None:
            return self.reference
        names = [m.name for m in self.methods]
        return "TDFusion" if "TDFusion" in names else names[0]


# ---------------------------------------------------------------------------------------------------- data


class _View(torch.utils.data.Dataset):
    """A dataset's first items with a name prefix (both splits' fused images live in one folder per method),
    resized to ``size`` if given (the budget's ``image_size``)."""

    def __init__(
        self,
        base: Any,
        prefix: str,
        limit: int | None = None,
        size: tuple[int, int] | None = None,
        indices: Sequence[int] | None = None,
    ) -> None:
        self.base, self.prefix, self.size = base, prefix, size
        self.indices = list(range(len(base)) if indices is None else indices)[:limit]
        for attr in ("num_classes", "task_size", "class_names", "target_kind", "source_names"):
            setattr(self, attr, getattr(base, attr, None))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        sample = self.base[self.indices[i]]
        if self.size is not None and sample.size != self.size:
            sample = self._resized(sample, self.size)
        return attrs.evolve(sample, name=self.prefix + sample.name)

    def _resized(self, sample: Any, size: tuple[int, int]) -> Any:
        """The sample at ``size``: sources and chroma bilinear (antialiased), masks nearest, boxes scaled."""
        from tdfusion_core.data import targets
        from tdfusion_core.training.batches import resize_images

        kind = getattr(self.base, "target_kind", None)
        if sample.target is not None and kind is None:
            raise ValueError(
                f"--image-size: dataset {type(self.base).__name__} does not say what its targets are (no "
                "target_kind attribute), so they cannot be resized with the images; leave out --image-size"
            )
        return attrs.evolve(
            sample,
            sources=resize_images(sample.sources, size, antialias=True).clamp(0, 1),
            chroma=resize_images(sample.chroma, size, antialias=True).clamp(0, 1),
            target=targets.apply("resize", kind or "none", sample.target, sample.size, size),
        )

    def only(self, i: int) -> torch.Tensor | None:
        """Ground truth of which source alone shows each pixel (synthetic scenes), else ``None``."""
        fn = getattr(self.base, "only", None)
        return fn(self.indices[i]) if fn is not None else None

    def best_source(self, i: int) -> torch.Tensor | None:
        """Ground truth of which source shows each object best (synthetic scenes), else ``None``."""
        fn = getattr(self.base, "best_source", None)
        return fn(self.indices[i]) if fn is not None else None


def _datasets(spec: ExperimentSpec) -> tuple[_View, _View]:
    from tdfusion_core.plugin.registry import resolve_dataset

    b = spec.budget
    if spec.data == "synthetic":
        options = {"n": b.n_train, "size": b.size, "seed": spec.data_seed, **spec.data_options}
        train = resolve_dataset("synthetic", split=spec.train_split, **options)
        test = resolve_dataset("synthetic", split=spec.test_split, **{**options, "n": b.n_test})
        return _View(train, "train_"), _View(test, "test_")
    train = resolve_dataset(spec.data, split=spec.train_split, **spec.data_options)
    if spec.holdout is not None:
        n, k = len(train), spec.holdout
        if not 0 < k < n:
            raise ValueError(
                f"holdout {k}: split {spec.train_split!r} of {spec.data} has {n} images; hold out 1 to {n - 1}"
            )
        return (
            _View(train, "train_", b.max_images, b.image_size, indices=range(n - k)),
            _View(train, "test_", b.max_images, b.image_size, indices=range(n - k, n)),
        )
    test = resolve_dataset(spec.data, split=spec.test_split, **spec.data_options)
    return _View(train, "train_", b.max_images, b.image_size), _View(test, "test_", b.max_images, b.image_size)


def _write(folder: Path, name: str, image: torch.Tensor) -> None:
    from tdfusion_core.common.io import write_image

    write_image(folder / f"{name}.png", image.clamp(0, 1))


def _rule_image(rule: str, sources: torch.Tensor) -> torch.Tensor:
    return sources.max(dim=0, keepdim=True).values if rule == "max" else sources.mean(dim=0, keepdim=True)


def oracle_image(sources: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """Each object from the source that shows it (:meth:`SyntheticScenes.best_source`): pixels coded 1 from source
    0 (infrared: warm objects), 2 from source 1 (visible: markings, cold objects), the mean of the sources
    elsewhere. ``sources`` ``(K, H, W)``, ``best`` ``(H, W)``."""
    only = best
    out = sources.mean(dim=0, keepdim=True).clone()
    out[0][only == 1] = sources[0][only == 1]
    out[0][only == 2] = sources[1][only == 2]
    return out


# ---------------------------------------------------------------------------------------------------- cells


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if attrs.has(type(value)):
        return _jsonable(attrs.asdict(value, recurse=False))
    return value


def cell_key(spec: ExperimentSpec, method: Method, seed: int) -> str:
    """Hash of everything a cell's result depends on (a cached cell is reused only when this matches)."""
    from tdfusion_core import __version__

    parts = {
        "version": __version__,
        "method": _jsonable(method),
        "seed": seed,
        "budget": _jsonable(spec.budget),
        "data": spec.data,
        "data_options": _jsonable(spec.data_options),
        "splits": [spec.train_split, spec.test_split],
        "task": spec.task,
        "task_options": _jsonable(spec.task_options),
        "train_options": _jsonable(spec.train_options) if method.kind == "train" else None,
        "data_seed": spec.data_seed,
        "fusion_metrics": list(spec.fusion_metrics),
        **({"holdout": spec.holdout} if spec.holdout is not None else {}),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _Cells:
    """Runs the cells of one experiment (shared data, written source folders, rule images made once)."""

    def __init__(self, spec: ExperimentSpec, echo: Callable[[str], None]) -> None:
        self.spec, self.echo = spec, echo
        self.train, self.test = _datasets(spec)
        self.out = spec.out
        self.sources_dir = self.out / "sources"
        self._sources_written = False

    # --------------------------------------------------------------- images of each method
    def _samples(self, data: _View) -> Iterable[tuple[int, Any]]:
        for i in range(len(data)):
            yield i, data[i]

    def write_sources(self) -> None:
        if self._sources_written:
            return
        for _i, s in self._samples(self.test):
            for k, folder in enumerate(("ir", "vi")[: s.sources.shape[0]]):
                path = self.sources_dir / folder / f"{s.name}.png"
                if not path.exists():
                    _write(self.sources_dir / folder, s.name, s.sources[k : k + 1])
        self._sources_written = True

    def _fixed_images(self, method: Method) -> Path:
        folder = self.out / "images" / method.slug
        done = folder / ".complete"
        if done.exists():
            return folder
        for data in (self.train, self.test):
            for i, s in self._samples(data):
                if method.kind == "rule":
                    image = _rule_image(str(method.rule), s.sources)
                else:
                    best = data.best_source(i)
                    if best is None:
                        raise ValueError("the oracle needs synthetic scenes (ground truth of which source shows what)")
                    image = oracle_image(s.sources, best)
                _write(folder, s.name, image)
        done.write_text("")
        return folder

    def _folder_images(self, method: Method) -> Path:
        """Link a user's folder (``DIR`` or ``DIR/<split>``) into one prefixed folder."""
        from tdfusion_core.common.io import list_images

        assert method.folder is not None
        root = Path(method.folder)
        if not root.is_dir():
            raise FileNotFoundError(f"method {method.name!r}: fused folder {root} does not exist")
        folder = self.out / "images" / method.slug
        folder.mkdir(parents=True, exist_ok=True)
        test_split = self.spec.train_split if self.spec.holdout is not None else self.spec.test_split
        for split, prefix, data in (
            (self.spec.train_split, "train_", self.train),
            (test_split, "test_", self.test),
        ):
            src = root / split if (root / split).is_dir() else root
            files = list_images(src)
            for i in range(len(data)):
                name = data[i].name[len(prefix) :]
                if name not in files:
                    raise FileNotFoundError(f"method {method.name!r}: no fused image named {name!r} in {src}")
                link = folder / f"{prefix}{name}{files[name].suffix}"
                if not link.exists():
                    link.symlink_to(files[name].resolve())
        return folder

    def _trained_images(self, method: Method, seed: int) -> tuple[Path, dict[str, Any]]:
        from tdfusion_core.training.config import TrainConfig
        from tdfusion_core.training.trainer import MetaTrainer

        b, spec = self.budget, self.spec
        values: dict[str, Any] = {
            "task": spec.task,
            "task_options": dict(spec.task_options),
            "epochs": b.epochs,
            "meta_steps": b.meta_steps,
            "fusion_steps": b.fusion_steps,
            "seed": seed,
            "device": spec.device,
            "progress": False,
            "log_images": False,
        }
        if b.crop is not None:
            values["crop_size"] = b.crop
        if spec.data == "synthetic":
            values["task_size"] = b.size
        values.update(spec.train_options)
        values.update(method.changes)
        config = TrainConfig(**values)
        run_dir = self.out / "runs" / method.slug / f"seed{seed}"
        trainer = MetaTrainer(config, train_set=self.train, out_dir=run_dir)
        trainer.fit()
        folder = self.out / "images" / method.slug / f"seed{seed}"
        fusion_net = trainer.fusion_net.eval()  # F alone: trainer.fuse would also run G, doubling the cost
        with torch.no_grad():
            for data in (self.train, self.test):
                for _i, s in self._samples(data):
                    fused = fusion_net(s.sources[None].to(trainer.device)).clamp(0, 1)
                    _write(folder, s.name, fused[0].cpu())
        extra: dict[str, Any] = {"history": trainer.history[-1] if trainer.history else {}}
        if not config.fixed_weights:
            extra["preference"] = self._preference(trainer.loss_generator)
        return folder, extra

    def _preference(self, generator: torch.nn.Module) -> dict[str, Any] | None:
        from tdfusion_core.training.generator_stats import preference_scores

        items = [(self.test[i].sources, self.test.only(i)) for i in range(len(self.test))]
        if not items or items[0][1] is None:
            return None
        sources = torch.stack([s for s, _ in items]).to(self.spec.device)
        only = torch.stack([o for _, o in items if o is not None]).to(self.spec.device)
        return preference_scores(generator, sources, only)

    def _task_size(self) -> tuple[int, int] | None:
        """What the downstream task sees: the scene size (synthetic), else ``--set task_size=HxW`` if given, else
        the dataset's task size."""
        from tdfusion_core.training.config import TrainConfig

        if self.spec.data == "synthetic":
            return self.budget.size
        size = self.spec.train_options.get("task_size")
        return None if size is None else TrainConfig(task_size=size).task_size

    @property
    def budget(self) -> Budget:
        return self.spec.budget

    # --------------------------------------------------------------- one cell
    def run(self, method: Method, seed: int) -> dict[str, Any]:
        from tdfusion_core.apps.downstream import DownstreamMethod, run_downstream
        from tdfusion_core.apps.evaluate import evaluate_folders

        spec = self.spec
        start = time.perf_counter()
        cpu_start = time.process_time()  # this process's CPU time: what a cell costs on a shared machine
        self.write_sources()
        extra: dict[str, Any] = {}
        if method.kind == "source":
            assert method.source is not None
            down = DownstreamMethod(method.name, source=method.source)
            folder = self.sources_dir / ("ir", "vi")[method.source]
        else:
            if method.kind == "train":
                folder, extra = self._trained_images(method, seed)
            elif method.kind == "folder":
                folder = self._folder_images(method)
            else:
                folder = self._fixed_images(method)
            down = DownstreamMethod(method.name, fused_dir=folder)
        fusion: dict[str, float] = {}
        if spec.fusion_metrics:
            table = evaluate_folders(
                self.sources_dir / "ir",
                self.sources_dir / "vi",
                {method.name: folder},
                metrics=list(spec.fusion_metrics),
                dataset="held out",
            )
            fusion = table.means[method.name]
        options = dict(spec.task_options)
        downstream = run_downstream(
            spec.task,
            self.train,
            [down],
            val_set=self.test,
            steps=self.budget.downstream_steps,
            batch_size=self.budget.downstream_batch,
            size=self._task_size(),
            seed=seed,
            device=spec.device,
            task_options=options,
        )
        task_metrics = downstream.table.means[method.name]
        return {
            "method": method.name,
            "seed": seed,
            "key": cell_key(spec, method, seed),
            "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu_start,
            "task_metrics": task_metrics,
            "fusion_metrics": fusion,
            **extra,
        }


def _cell_path(out: Path, method: Method, seed: int) -> Path:
    return out / "cells" / method.slug / f"seed{seed}.json"


def _format_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def cell_order(spec: ExperimentSpec) -> list[tuple[Method, int]]:
    """The cells in the order they run: seed by seed, the untrained rows first within a seed (the methods' order
    otherwise). An interrupted experiment thus has every method at the seeds it finished: its cells already pair."""
    cells = [(m, s) for m in spec.methods for s in (spec.seeds[:1] if m.once else spec.seeds)]
    return sorted(cells, key=lambda cell: (spec.seeds.index(cell[1]), cell[0].kind == "train"))


def run_experiment(
    spec: ExperimentSpec, echo: Callable[[str], None] = print, run_missing: bool = True
) -> dict[str, Any]:
    """Run (or resume) every cell, then write and return the summary (see the module docstring).

    ``run_missing=False`` runs nothing: the summary of the cells already finished (an interrupted or still running
    experiment's figures so far; missing cells count as missing seeds)."""
    spec.out.mkdir(parents=True, exist_ok=True)
    (spec.out / "spec.json").write_text(json.dumps(_jsonable(attrs.asdict(spec, recurse=False)), indent=2))
    cells = cell_order(spec)
    results: list[dict[str, Any]] = []
    runner: _Cells | None = None
    spent: list[float] = []
    todo = [
        (m, s)
        for m, s in cells
        if not _cached(_cell_path(spec.out, m, s), cell_key(spec, m, s))  # cells left to run, for the ETA
    ]
    done_new = 0
    for index, (method, seed) in enumerate(cells, 1):
        path = _cell_path(spec.out, method, seed)
        cached = _cached(path, cell_key(spec, method, seed))
        if cached is not None:
            echo(f"[{index}/{len(cells)}] {method.name}, seed {seed}: cached")
            results.append(cached)
            continue
        if not run_missing:
            echo(f"[{index}/{len(cells)}] {method.name}, seed {seed}: not run")
            continue
        if runner is None:
            runner = _Cells(spec, echo)
        echo(f"[{index}/{len(cells)}] {method.name}, seed {seed} ...")
        start = time.perf_counter()
        result = runner.run(method, seed)
        spent.append(time.perf_counter() - start)
        done_new += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(path)
        results.append(result)
        left = len(todo) - done_new
        eta = f", about {_format_seconds(sum(spent) / len(spent) * left)} left" if left else ""
        primary = next(iter(result["task_metrics"].items()), ("", math.nan))
        echo(
            f"[{index}/{len(cells)}] {method.name}, seed {seed}: {primary[0]} {primary[1]:.4f} "
            f"in {_format_seconds(spent[-1])}{eta}"
        )
    summary = summarise(spec, results)
    write_reports(spec, summary)
    return summary


def _cached(path: Path, key: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if data.get("key") == key else None


# ---------------------------------------------------------------------------------------------------- summary

#: preference fields reported per method (see tdfusion_core.training.generator_stats.preference_scores)
PREFERENCE_FIELDS = (
    "infrared_pref",
    "swapped_infrared_pref",
    "visible_pref",
    "swapped_visible_pref",
    "min_source_weight",
    "swapped_min_source_weight",
)


def _nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def summarise(spec: ExperimentSpec, results: Sequence[dict[str, Any]], primary: str | None = None) -> dict[str, Any]:
    """Mean ± CI per method and metric, and the paired comparison of every method with the reference.

    ``results`` are cell dicts (``method``, ``seed``, ``task_metrics``, ``fusion_metrics``, optional
    ``preference``). ``primary`` is the metric of the comparisons and the verdict (default: the first task metric).
    """
    by_method: dict[str, dict[int, dict[str, Any]]] = {}
    for r in results:
        by_method.setdefault(r["method"], {})[int(r["seed"])] = r
    methods = [m.name for m in spec.methods if m.name in by_method] or list(by_method)
    first = next(iter(results))["task_metrics"] if results else {}
    task_names = [k for k in first if "." not in k]
    primary = primary or (task_names[0] if task_names else "")
    fusion_names = list(next(iter(results))["fusion_metrics"]) if results else []

    def values(method: str, metric: str, seeds: Sequence[int]) -> list[float]:
        out = []
        for s in seeds:
            r = by_method[method].get(s)
            if r is None:
                out.append(math.nan)
                continue
            if metric in r["task_metrics"]:
                out.append(_nan(r["task_metrics"][metric]))
            elif metric in r.get("fusion_metrics", {}):
                out.append(_nan(r["fusion_metrics"][metric]))
            else:
                out.append(_nan((r.get("preference") or {}).get(metric)))
        return out

    seeds = sorted({int(r["seed"]) for r in results})
    table: dict[str, dict[str, dict[str, float]]] = {}
    for m in methods:
        row = {}
        for metric in [*task_names, *fusion_names, *PREFERENCE_FIELDS]:
            s = mean_ci(values(m, metric, seeds))
            if s.n:
                row[metric] = {"mean": s.mean, "half_width": s.half_width, "n": s.n}
        table[m] = row
    reference = spec.reference_name if spec.reference_name in by_method else (methods[0] if methods else "")
    comparisons: dict[str, dict[str, Any]] = {}
    for m in methods:
        if m == reference:
            continue
        c = paired_comparison(values(m, primary, seeds), values(reference, primary, seeds))
        comparisons[m] = {**c.as_dict(), "verdict": verdict(c.low, c.high)}
    return {
        "reference": reference,
        "primary": primary,
        "seeds": seeds,
        "budget": _jsonable(spec.budget),
        "task": spec.task,
        "data": spec.data,
        "methods": table,
        "comparisons": comparisons,
        "task_metrics": task_names,
        "fusion_metrics": fusion_names,
    }


def _fmt(cell: dict[str, float] | None, digits: int = 3) -> str:
    if not cell or math.isnan(cell["mean"]):
        return "—"
    if cell["n"] < 2 or math.isnan(cell["half_width"]):
        return f"{cell['mean']:.{digits}f}"
    return f"{cell['mean']:.{digits}f} ± {cell['half_width']:.{digits}f}"


def verdict_sentence(summary: dict[str, Any], method: str) -> str:
    """Plain words for the comparison of ``method`` with the reference, as far as its interval allows."""
    ref, metric = summary["reference"], summary["primary"]
    c = summary["comparisons"].get(method)
    if c is None:
        return ""
    n = c["n"]
    if n < 2:
        return f"{method} vs {ref}: one seed only, no interval: not distinguishable"
    words = {
        "ahead": f"{method} is ahead of {ref}",
        "behind": f"{method} is behind {ref}",
        "not distinguishable": f"{method} and {ref} are not distinguishable",
    }[c["verdict"]]
    return (
        f"{words} on {metric} at this budget: difference {c['mean']:+.3f}, 95 % CI "
        f"[{c['low']:+.3f}, {c['high']:+.3f}] over {n} seeds"
    )


def _interval(low: float, high: float) -> str:
    return "—" if math.isnan(low) or math.isnan(high) else f"[{low:+.3f}, {high:+.3f}]"


def _p(p: float) -> str:
    return "—" if math.isnan(p) else f"{p:.3f}"


#: budget fields that do not apply, by whether the data are synthetic scenes (they would only mislead a reader)
_UNUSED_BUDGET = {True: ("max_images", "image_size"), False: ("n_train", "n_test", "size")}


def to_markdown(summary: dict[str, Any]) -> str:
    """The report's tables (methods × metrics with mean ± 95 % CI; paired comparisons; preference scores)."""
    methods = list(summary["methods"])
    tm, fm = summary["task_metrics"], summary["fusion_metrics"]
    synthetic = summary.get("data", "synthetic") == "synthetic"
    lines = [
        f"Seeds: {', '.join(map(str, summary['seeds']))}. Budget: "
        + ", ".join(f"{k}={v}" for k, v in summary["budget"].items() if k not in _UNUSED_BUDGET[synthetic])
        + ". Cells: mean ± half-width of the 95 % t interval over seeds.",
        "",
        "| method | " + " | ".join([*tm, *fm]) + " |",
        "|---|" + "---:|" * (len(tm) + len(fm)),
    ]
    for m in methods:
        row = summary["methods"][m]
        lines.append(f"| {m} | " + " | ".join(_fmt(row.get(k)) for k in [*tm, *fm]) + " |")
    lines += [
        "",
        f"Paired difference in {summary['primary']} against {summary['reference']} (same seeds): mean, 95 % t "
        "interval, 95 % bootstrap interval, two-sided p, verdict.",
        "",
        "| method | difference | t interval | bootstrap interval | p | verdict |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for m, c in summary["comparisons"].items():
        lines.append(
            f"| {m} | {c['mean']:+.3f} | {_interval(c['low'], c['high'])} | "
            f"{_interval(c['boot_low'], c['boot_high'])} | {_p(c['p_value'])} | "
            f"{c['verdict'] if c['n'] >= 2 else 'one seed: no interval'} |"
        )
    prefs = [m for m in methods if "infrared_pref" in summary["methods"][m]]
    if prefs:
        lines += [
            "",
            "Preference score of G on the held-out scenes (fraction of infrared-only pixels where G weights infrared "
            "above ½, of visible-only pixels where it weights visible above ½), in the given and the swapped source "
            "order, and the smallest mean weight of a source (near 0: collapsed).",
            "",
            "| method | infrared-only | (swapped) | visible-only | (swapped) | min source weight | (swapped) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for m in prefs:
            row = summary["methods"][m]
            lines.append(f"| {m} | " + " | ".join(_fmt(row.get(k)) for k in PREFERENCE_FIELDS) + " |")
    return "\n".join(lines) + "\n"


def write_reports(spec: ExperimentSpec, summary: dict[str, Any]) -> dict[str, Path]:
    """``report.md``, ``results.csv``, ``comparison.csv``, ``results.json`` and ``summary.png`` (with matplotlib)."""
    import csv

    out = spec.out
    paths = {
        "markdown": out / "report.md",
        "csv": out / "results.csv",
        "comparison": out / "comparison.csv",
        "json": out / "results.json",
    }
    sentences = [verdict_sentence(summary, m) for m in summary["comparisons"]]
    paths["markdown"].write_text(
        "# tdfusion experiment\n\n"
        + f"Task `{summary['task']}` on `{summary['data']}`.\n\n"
        + to_markdown(summary)
        + ("\n" + "\n".join(f"- {s}." for s in sentences if s) + "\n" if sentences else "")
    )
    with paths["csv"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "metric", "mean", "ci95_half_width", "n_seeds"])
        for m, row in summary["methods"].items():
            for metric, cell in row.items():
                w.writerow([m, metric, cell["mean"], cell["half_width"], cell["n"]])
    with paths["comparison"].open("w", newline="") as f:
        w = csv.writer(f)
        keys = ["mean", "low", "high", "boot_low", "boot_high", "p_value", "n", "verdict"]
        w.writerow(["method", "reference", "metric", *keys])
        for m, c in summary["comparisons"].items():
            w.writerow([m, summary["reference"], summary["primary"], *(c[k] for k in keys)])
    paths["json"].write_text(json.dumps(summary, indent=2, default=str))
    plot = out / "summary.png"
    if _plot(summary, plot):
        paths["plot"] = plot
    return paths


def _plot(summary: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    metric = summary["primary"]
    names = [m for m in summary["methods"] if metric in summary["methods"][m]]
    if not names:
        return False
    means = [summary["methods"][m][metric]["mean"] for m in names]
    errs = [
        0.0 if math.isnan(summary["methods"][m][metric]["half_width"]) else summary["methods"][m][metric]["half_width"]
        for m in names
    ]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(names), 3.2))
    ax.bar(range(len(names)), means, yerr=errs, capsize=4, color="#4C72B0")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"{metric} (mean ± 95 % CI)")
    ax.set_title(f"{len(summary['seeds'])} seed(s)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
