"""The built-in demo: TDFusion end to end on synthetic scenes, on the CPU, with nothing to download.

1. Synthetic infrared/visible scenes (:class:`tdfusion_core.data.SyntheticScenes`): warm people and vehicles that
   only the infrared shows at night; markings and cold objects that only the visible image shows.
2. TDFusion: ReFusion fusion network F, LPN loss generator G and the built-in ``tiny-seg`` task (on the fused
   luminance) trained with Algorithm 1 and the exact JVP meta-gradient.
3. The same F trained with fixed weights ½ (the paper's ablation I: no loss generator).
4. On held-out scenes: fusion metrics (the paper's Table 1 set) of each method and of each single source, and the
   downstream protocol (paper Table 2): a fresh segmenter trained on each method's images for the same budget,
   evaluated by mIoU / mAcc.
5. Which source G prefers where: the mean infrared weight on warm objects at night and by day, on markings, on
   cold objects and on the background; weight maps and fused images as figures.

Everything goes to ``<out>/report.md`` (plus PNG figures and ``results.json``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch

from tdfusion_core.config import TrainConfig
from tdfusion_core.data.synthetic import COLD, MARKING, PERSON, VEHICLE, SyntheticScenes
from tdfusion_core.downstream import DownstreamMethod, run_downstream
from tdfusion_core.evaluate import evaluate_folders, to_markdown
from tdfusion_core.io import write_image
from tdfusion_core.trainer import MetaTrainer

log = logging.getLogger(__name__)


@attrs.define(kw_only=True)
class DemoSettings:
    """Budget of the demo; :meth:`quick` is the one-minute version used in tests."""

    out: Path = attrs.field(default=Path("runs/demo"), converter=Path)
    size: tuple[int, int] = (96, 128)
    n_train: int = 32
    n_test: int = 16
    epochs: int = 3
    meta_steps: int = 10
    fusion_steps: int = 16
    crop: int = 64
    downstream_steps: int = 100
    seed: int = 0
    device: str = "cpu"

    @classmethod
    def quick(cls, **changes: Any) -> DemoSettings:
        """A tiny budget (about a minute on two CPU cores)."""
        values: dict[str, Any] = dict(
            size=(64, 80), n_train=8, n_test=6, epochs=1, meta_steps=2, fusion_steps=4, crop=48, downstream_steps=20
        )
        values.update(changes)
        return cls(**values)


def _train_config(s: DemoSettings, **changes: Any) -> TrainConfig:
    return TrainConfig(
        task="tiny-seg",
        task_options={"input_kind": "luminance", "width": 16},
        epochs=s.epochs,
        meta_steps=s.meta_steps,
        fusion_steps=s.fusion_steps,
        crop_size=s.crop,
        task_size=s.size,
        lr_fusion=1e-3,
        lr_task=1e-3,
        lr_generator=1e-2,  # G takes max-normalised steps: a short budget needs a larger one
        lr_step_size=max(s.epochs, 1),
        seed=s.seed,
        device=s.device,
        progress=True,
        **changes,
    )


class _Prefixed(torch.utils.data.Dataset):
    """A dataset whose sample names get a prefix (train and held-out fused images share one folder per method)."""

    def __init__(self, base: SyntheticScenes, prefix: str) -> None:
        self.base, self.prefix = base, prefix
        self.num_classes, self.task_size = base.num_classes, base.task_size

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> Any:
        return attrs.evolve(self.base[i], name=self.prefix + self.base.name(i))


def _stack(dataset: _Prefixed) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    samples = [dataset[i] for i in range(len(dataset))]
    return (
        torch.stack([x.sources for x in samples]),
        torch.stack([x.target for x in samples]),
        [x.name for x in samples],
    )


def _write_all(folder: Path, images: torch.Tensor, names: list[str]) -> None:
    for image, name in zip(images, names):
        write_image(folder / f"{name}.png", image)


def weight_preferences(weights: torch.Tensor, masks: torch.Tensor, night: torch.Tensor) -> dict[str, float | None]:
    """Mean infrared weight ``w_0`` over the pixels of each region (``None`` where a region has no pixels)."""
    w_ir = weights[:, 0]
    night_px = night[:, None, None].expand_as(masks)
    warm = (masks == PERSON) | (masks == VEHICLE)
    regions = {
        "warm objects, night": warm & night_px,
        "warm objects, day": warm & ~night_px,
        "markings": masks == MARKING,
        "cold objects": masks == COLD,
        "background": masks == 0,
    }
    return {name: (float(w_ir[sel].mean()) if sel.any() else None) for name, sel in regions.items()}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _figures(out: Path, sources: torch.Tensor, fused: dict[str, torch.Tensor], weights: torch.Tensor) -> list[str]:
    """Fig. 5-style weight maps of one scene (matplotlib when installed) and grids of more scenes and methods."""
    from tdfusion_core.visual import save_gray_grid, save_weight_grid

    try:
        from tdfusion_core.figures import weight_map_figure

        weight_map_figure(
            [sources[0, 0], sources[0, 1]],
            fused["TDFusion"][0],
            [weights[0, 0], weights[0, 1]],
            out / "weights.png",
            title="G's weights on a held-out scene",
        )
    except ImportError:
        save_weight_grid(out / "weights.png", sources[:1], fused["TDFusion"][:1], weights[:1])
    save_weight_grid(out / "weight_grid.png", sources, fused["TDFusion"], weights)
    save_gray_grid(out / "fused.png", torch.cat([sources, *fused.values()], dim=1))
    return ["weights.png", "weight_grid.png", "fused.png"]


REPORT = """# tdfusion demo

Synthetic infrared/visible scenes ({n_train} for training, {n_test} held out, {h}x{w}), {device}, {seconds:.0f} s in
all. F = ReFusion, G = LPN, task = built-in `tiny-seg` on the fused luminance; {epochs} epoch(s) of {meta} meta steps
and {fusion} fusion steps; seed {seed}. "Fixed ½" is the same F trained with fixed weights (the paper's ablation I:
no loss generator).

## Held-out results

Fusion metrics (the paper's Table 1 set) of each method's images against both sources, and the downstream protocol
(the paper's Table 2): a fresh segmenter trained for {downstream} steps on each method's images, mIoU and mAcc on the
held-out scenes. SCD is undefined (nan) for a single source, which is one of its own references.

{table}
## Where the learned loss looks

Mean weight G gives the infrared source in each kind of region of the held-out scenes. Warm objects at night are
visible only in infrared; markings and cold objects only in the visible image.

{prefs}

## Figures

G's weights on a night scene (sources, fused image, weight of each source):

![weights](weights.png)

More scenes (columns: infrared, visible, TDFusion fused, w_ir, w_vis):

![weight grid](weight_grid.png)

Images of each method (columns: infrared, visible, TDFusion, fixed ½):

![fused](fused.png)

Fused images are in `fused/`, the two training runs (config, checkpoints, TensorBoard logs, model.pt) in `tdfusion/`
and `fixed/`. A budget this small shows the mechanics, not the paper's numbers: raise it with `--epochs`.
"""


def run_demo(settings: DemoSettings, echo: Callable[[str], None] = print) -> Path:
    """Run the whole demo and return the path of ``report.md``."""
    start = time.perf_counter()
    s = settings
    out = s.out
    out.mkdir(parents=True, exist_ok=True)
    train = _Prefixed(SyntheticScenes(s.n_train, size=s.size, seed=s.seed, split="train"), "train_")
    test = _Prefixed(SyntheticScenes(s.n_test, size=s.size, seed=s.seed, split="test"), "test_")
    num_classes = int(train.num_classes or 5)
    echo(f"synthetic scenes: {len(train)} train, {len(test)} held out, {s.size[0]}x{s.size[1]}")

    runs: dict[str, MetaTrainer] = {}
    for label, folder, changes in (("TDFusion", "tdfusion", {}), ("Fixed ½", "fixed", {"fixed_weights": True})):
        echo(f"training {label} ...")
        torch.manual_seed(s.seed)
        runs[label] = MetaTrainer(_train_config(s, **changes), train_set=train, out_dir=out / folder)
        runs[label].fit()

    echo("fusing; fusion metrics and the downstream protocol on the held-out scenes ...")
    train_sources, _, train_names = _stack(train)
    test_sources, test_masks, test_names = _stack(test)
    ir_dir, vi_dir = out / "sources" / "ir", out / "sources" / "vi"
    _write_all(ir_dir, test_sources[:, :1], test_names)
    _write_all(vi_dir, test_sources[:, 1:2], test_names)
    fused_dirs: dict[str, Path] = {}
    fused_test: dict[str, torch.Tensor] = {}
    for label, trainer in runs.items():
        fused_dirs[label] = out / "fused" / label.split()[0].lower()
        fused_test[label] = trainer.fuse(test_sources)[0].cpu()
        _write_all(fused_dirs[label], fused_test[label], test_names)
        _write_all(fused_dirs[label], trainer.fuse(train_sources)[0].cpu(), train_names)
    weights = runs["TDFusion"].fuse(test_sources)[1].cpu()

    table = evaluate_folders(
        ir_dir, vi_dir, {**fused_dirs, "Infrared only": ir_dir, "Visible only": vi_dir}, dataset="synthetic, held out"
    )
    methods = [DownstreamMethod(label, fused_dir=folder) for label, folder in fused_dirs.items()]
    methods += [DownstreamMethod("Infrared only", source=0), DownstreamMethod("Visible only", source=1)]
    downstream = run_downstream(
        "tiny-seg",
        train,
        methods,
        val_set=test,
        steps=s.downstream_steps,
        batch_size=4,
        size=s.size,
        seed=s.seed,
        device=s.device,
        task_options={"input_kind": "luminance", "width": 16, "lr": 1e-3, "num_classes": num_classes},
    )
    for method, values in downstream.table.means.items():
        table.means[method].update({k: values[k] for k in ("mIoU", "mAcc")})
    table.metrics = [*table.metrics, "mIoU", "mAcc"]

    night = torch.tensor([name.endswith("N") for name in test_names])
    prefs = weight_preferences(weights, test_masks, night)
    shown = torch.argsort((~night).int(), stable=True)[:4]  # night scenes first
    figures = _figures(out, test_sources[shown], {k: v[shown] for k, v in fused_test.items()}, weights[shown])
    seconds = time.perf_counter() - start

    pref_rows = [f"| {region} | {_fmt(v)} | {_fmt(None if v is None else 1 - v)} |" for region, v in prefs.items()]
    report = out / "report.md"
    report.write_text(
        REPORT.format(
            n_train=len(train),
            n_test=len(test),
            h=s.size[0],
            w=s.size[1],
            device=s.device.upper(),
            seconds=seconds,
            epochs=s.epochs,
            meta=s.meta_steps,
            fusion=s.fusion_steps,
            seed=s.seed,
            downstream=s.downstream_steps,
            table=to_markdown([table], digits=3),
            prefs="\n".join(["| region | mean infrared weight | visible weight |", "|---|---:|---:|", *pref_rows]),
        )
    )
    settings_dict = {k: (str(v) if isinstance(v, Path) else v) for k, v in attrs.asdict(s).items()}
    summary = {
        "results": table.means,
        "weight_preferences": prefs,
        "seconds": seconds,
        "figures": figures,
        "settings": settings_dict,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    echo(f"report: {report.resolve()}")
    return report
