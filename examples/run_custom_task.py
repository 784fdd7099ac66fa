"""Write a new task plugin in one file and train TDFusion with it on synthetic scenes.

TDFusion learns the *fusion loss* from a downstream task: the loss generator G weights the sources per pixel so that
the fusion network F, trained with that loss, produces images on which the task network T does best. Any task can
drive it. This example adds a task that core does not ship, **counting warm objects** (people and vehicles), in
four steps:

1. a small network of its own (:class:`DensityCounter`) that predicts a density map whose sum is the count;
2. a :class:`tdfusion_core.kernel.task.Task` subclass (:class:`WarmCountTask`) that builds it, computes a differentiable
   loss against targets derived from the dataset's boxes, and evaluates it (count MAE, RMSE, exact-count accuracy);
3. a plugin object with a ``hookimpl`` of ``tdfusion_register_tasks``, registered at run time with
   :func:`tdfusion_core.plugin.manager.register_plugin` (no packaging, no entry point);
4. a :class:`tdfusion_core.training.trainer.MetaTrainer` run that builds the task *by its registered name*, on
   :class:`tdfusion_core.data.SyntheticScenes`, then prints what G learned: the mean weight of each source overall,
   and the infrared weight per class region by day and by night (warm objects are clear only in infrared at night;
   road markings and cold objects exist only in the visible image), and the task's own metrics on held-out scenes.
   How far G moves from ½ depends on the budget: the tiny one below only shows that everything runs.

Run it (about 4 minutes of CPU time with the defaults; seconds with the tiny budget the tests use)::

    python examples/run_custom_task.py
    python examples/run_custom_task.py --epochs 1 --meta-steps 2 --fusion-steps 2 --size 64x80 --train-scenes 8 --threads 1

To ship the task as an installable plugin instead, run ``tdfusion new-plugin NAME``: it writes a distribution with
the same pieces and the ``tdfusion`` entry point.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as nnf

from tdfusion_core import hookimpl
from tdfusion_core.data import SyntheticScenes
from tdfusion_core.data.synthetic import COLD, MARKING, PERSON, VEHICLE
from tdfusion_core.kernel.task import Task
from tdfusion_core.plugin.manager import register_plugin, unregister_plugin
from tdfusion_core.training.config import TrainConfig
from tdfusion_core.training.trainer import MetaTrainer

#: box classes of SyntheticScenes(target="boxes") that count as warm objects (0 person, 1 vehicle; 2 is cold)
WARM_BOX_CLASSES = (0, 1)


# ---------------------------------------------------------------------------------------------------------- 1. network
class DensityCounter(nn.Module):
    """Images ``(B, C, H, W)`` -> a non-negative density map ``(B, 1, H, W)``; its sum over pixels is the count.

    Two strided convolutions see objects at a quarter of the resolution, a third one brings the features back up.
    No BatchNorm here (the meta step would save and restore its statistics; tiny-seg shows that case).
    """

    def __init__(self, in_channels: int = 1, width: int = 12) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Conv2d(2 * width + in_channels, 1, 3, padding=1)
        nn.init.constant_(self.head.bias, -8.0)  # softplus(-8) ~ 3e-4 per pixel: the first counts are near zero

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        coarse = nnf.interpolate(self.features(images), size=images.shape[-2:], mode="bilinear", align_corners=False)
        # softplus keeps the density positive and smooth
        return nnf.softplus(self.head(torch.cat([coarse, images], dim=1)))


# ---------------------------------------------------------------------------------------------------------- 2. task
def density_targets(boxes: list[torch.Tensor], size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Ground-truth density ``(B, 1, H, W)``: each warm box spreads a mass of 1 uniformly over its pixels.

    ``boxes`` is what the task receives after core resized the images (and the boxes with them) to the task size:
    one ``(N, 5)`` tensor of ``class, x0, y0, x1, y1`` pixel rows per image.
    """
    h, w = size
    out = torch.zeros(len(boxes), 1, h, w, device=device)
    for i, rows in enumerate(boxes):
        for cls, x0, y0, x1, y1 in rows.tolist():
            if int(cls) not in WARM_BOX_CLASSES:
                continue
            c0, c1 = max(int(x0), 0), min(max(round(x1), int(x0) + 1), w)
            r0, r1 = max(int(y0), 0), min(max(round(y1), int(y0) + 1), h)
            if c1 > c0 and r1 > r0:
                out[i, 0, r0:r1, c0:c1] += 1.0 / ((r1 - r0) * (c1 - c0))
    return out


class WarmCountTask(Task):
    """Count the warm objects (people, vehicles) of a scene from the fused image.

    The Task contract (see ``tdfusion_core/kernel/task.py``) asks for three methods; the class attributes tell core what to
    feed the network and how to handle its targets:

    * ``input_kind = "luminance"``: the network sees the fused Y channel ``(B, 1, H, W)`` (``"rgb"`` would rebuild
      colour from the visible image's chroma);
    * ``target_kind = "boxes"``: core resizes the dataset's boxes with the images and collates them
      as a list; the count and the density map are derived from them inside :meth:`compute_loss`.

    Config: ``width`` (channels of the first layer), ``density_weight`` (weight of the per-pixel density term
    against the count term).
    """

    name = "warm-count"
    input_kind = "luminance"
    target_kind = "boxes"
    default_input_size = None  # use the run's task size (here: the scene size)

    def build_network(self) -> nn.Module:
        # built from config alone, randomly initialised, never downloading anything
        return DensityCounter(in_channels=1, width=int(self.config.get("width", 12)))

    def compute_loss(self, network: nn.Module, images: torch.Tensor, targets: Any) -> torch.Tensor:
        # Reach the parameters only through ``network``: core calls this with the one-step-updated T' substituted in
        # (tdfusion_core.kernel.functional), and differentiates the result with respect to ``images``.
        density = network(images)
        target = density_targets(targets, tuple(images.shape[-2:]), images.device)
        count_error = nnf.smooth_l1_loss(density.sum(dim=(1, 2, 3)), target.sum(dim=(1, 2, 3)))
        # the per-pixel term says *where* the objects are, which gives useful gradients from the first step on
        pixel_error = nnf.mse_loss(density, target) * float(images.shape[-1] * images.shape[-2])
        return count_error + float(self.config.get("density_weight", 1.0)) * pixel_error

    @torch.no_grad()
    def evaluate(self, network: nn.Module, batches: Iterable[tuple[torch.Tensor, Any]]) -> dict[str, float]:
        # the network is in eval mode here: the Task base class switches it and restores its mode afterwards
        errors: list[float] = []
        for images, targets in batches:
            predicted = network(images).sum(dim=(1, 2, 3)).cpu()
            true = torch.tensor([sum(int(c) in WARM_BOX_CLASSES for c in t[:, 0].tolist()) for t in targets])
            errors.extend((predicted - true.to(predicted)).tolist())
        e = torch.tensor(errors, dtype=torch.float64)
        return {
            "count_MAE": float(e.abs().mean()),
            "count_RMSE": float(e.pow(2).mean().sqrt()),
            "count_accuracy": float((e.abs() < 0.5).double().mean()),
        }


# ---------------------------------------------------------------------------------------------------------- 3. plugin
class WarmCountPlugin:
    """A plugin is any object with ``hookimpl`` functions named like the hooks of ``tdfusion_core/plugin/hookspecs.py``.

    An installed plugin would be a module named by an entry point in the ``tdfusion`` group; here an object
    registered at run time does the same job.
    """

    @hookimpl
    def tdfusion_register_tasks(self) -> Mapping[str, Any]:
        return {"warm-count": WarmCountTask}

    @hookimpl
    def tdfusion_on_epoch_end(self, trainer: Any, epoch: int, metrics: Mapping[str, float]) -> None:
        # event hooks observe the run (here: one line per epoch); they must not change the trainer's state
        weights = " ".join(f"{metrics[k]:.3f}" for k in sorted(metrics) if k.startswith("weight/"))
        print(
            f"epoch {epoch + 1}: meta task loss {metrics.get('meta/task_loss', float('nan')):.4f}, "
            f"fusion loss {metrics.get('fusion/fusion_loss', float('nan')):.4f}, "
            f"task loss {metrics.get('fusion/task_loss', float('nan')):.4f}, mean source weights [{weights}]",
            flush=True,
        )


# ---------------------------------------------------------------------------------------------------------- 4. training
def region_weight_table(trainer: MetaTrainer, scenes: SyntheticScenes) -> dict[tuple[str, str], tuple[float, int]]:
    """Mean weight G gives the infrared source on each class region, by day and by night: ``{(region, time):
    (mean w_ir, pixels)}``. ``scenes`` must yield masks (``target="mask"``)."""
    sums: dict[tuple[str, str], list[float]] = {}
    regions = {
        "warm objects": (PERSON, VEHICLE),
        "markings": (MARKING,),
        "cold objects": (COLD,),
        "background": (0,),
    }
    for i in range(len(scenes)):
        sample = scenes[i]
        _, weights = trainer.fuse(sample.sources[None])  # G's weights (B, K, H, W), no grad, eval mode
        w_ir = weights[0, 0].cpu()
        when = "night" if sample.name.endswith("N") else "day"
        for region, classes in regions.items():
            inside = torch.isin(sample.target, torch.tensor(classes))
            acc = sums.setdefault((region, when), [0.0, 0])
            acc[0] += float(w_ir[inside].sum())
            acc[1] += int(inside.sum())
    return {key: (total / count if count else float("nan"), int(count)) for key, (total, count) in sums.items()}


def parse_size(text: str) -> tuple[int, int]:
    """``"64x80"`` -> ``(64, 80)`` (height x width)."""
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs of Algorithm 1")
    parser.add_argument("--meta-steps", type=int, default=20, help="meta steps M per epoch (learning of G)")
    parser.add_argument("--fusion-steps", type=int, default=32, help="fusion-phase steps per epoch (F and T)")
    parser.add_argument("--size", type=parse_size, default=(96, 128), help="scene size HEIGHTxWIDTH")
    parser.add_argument("--train-scenes", type=int, default=64, help="synthetic training scenes")
    parser.add_argument("--val-scenes", type=int, default=16, help="held-out scenes for the evaluation")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate of F, T and G")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a busy shared machine)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    # Register the plugin: from now on "warm-count" is a task name like "tiny-seg" (see `tdfusion plugins`).
    register_plugin(WarmCountPlugin(), name="warm-count-example")
    try:
        # Synthetic IR/visible road scenes; target="boxes" gives (N, 5) pixel boxes the task turns into counts.
        # Night scenes are where infrared matters: warm objects are nearly invisible in the visible image.
        train_set = SyntheticScenes(n=args.train_scenes, size=args.size, seed=args.seed, target="boxes")
        val_set = SyntheticScenes(n=args.val_scenes, size=args.size, seed=args.seed, split="val", target="boxes")
        config = TrainConfig(
            task="warm-count",  # built through the registry, from the plugin registered above
            task_options={"width": 12},
            epochs=args.epochs,
            meta_steps=args.meta_steps,
            fusion_steps=args.fusion_steps,
            crop_size=args.size,  # fusion loss on the whole (small) scene
            fusion_options={"dim": 8, "num_blocks": 1, "heads": 2},  # a smaller ReFusion F for a CPU example
            lr_fusion=args.lr,
            lr_task=args.lr,
            lr_generator=args.lr,
            seed=args.seed,
            device=args.device,
            progress=False,
        )
        start = time.perf_counter()
        trainer = MetaTrainer(config, train_set=train_set)  # F, G and T built from the registry by name
        print(f"task {type(trainer.task).__name__} from the registry; {len(train_set)} training scenes {args.size}")
        trainer.fit()
        print(f"trained {config.epochs} epoch(s) in {time.perf_counter() - start:.1f} s")

        # What G learned: the mean weight of each source (they sum to one per pixel) ...
        means = trainer.source_weight_means()
        print("mean source weights: " + ", ".join(f"{n} {w:.3f}" for n, w in zip(train_set.source_names, means)))
        # ... and per class region, by day and by night, on held-out scenes with masks (same scenes, other target).
        val_masks = SyntheticScenes(n=args.val_scenes, size=args.size, seed=args.seed, split="val", target="mask")
        print("infrared weight w_ir by region (held-out scenes):")
        print(f"  {'region':<14}{'day':>18}{'night':>18}")
        table = region_weight_table(trainer, val_masks)
        for region in ("warm objects", "markings", "cold objects", "background"):
            cells = []
            for when in ("day", "night"):
                value, pixels = table.get((region, when), (float("nan"), 0))
                cells.append(f"{value:.3f} ({pixels:>6d} px)" if pixels else "-")
            print(f"  {region:<14}{cells[0]:>18}{cells[1]:>18}")

        # The task's own evaluation on F's fused images of held-out scenes.
        metrics = trainer.evaluate(val_set)
        print("held-out evaluation: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    finally:
        unregister_plugin("warm-count-example")
    return 0


if __name__ == "__main__":
    sys.exit(main())
