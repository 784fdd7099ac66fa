"""Built-in plugin: the files and console lines of a training run, written through the event hooks.

In the run directory:

* ``results.csv``: one row per epoch (``epoch`` then every metric of the epoch: losses, learning rates, mean weight
  per source, G's statistics when the trainer reports them, validation metrics, ``epoch_seconds``); rewritten from
  the trainer's history each epoch, so a resumed run keeps one row per epoch;
* ``results.png``: curves of those columns (when matplotlib is installed);
* ``train.log``: the plan, the epoch summaries and every message of the ``tdfusion_core`` loggers, plain text.

On the console (the ``tdfusion_core`` logger at INFO, which ``tdfusion train`` shows): before training, the planned
number of meta and fusion steps per epoch; after the first steps, an estimate of the time per epoch and of the whole
run; after each epoch one aligned line (:func:`epoch_line`).
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tdfusion_core import hookimpl

log = logging.getLogger("tdfusion_core.run")
_STATE: dict[int, _RunState] = {}
#: steps of each phase timed (after a first, warm-up step) before the estimate is printed
ESTIMATE_AFTER = 2


class _RunState:
    def __init__(self, trainer: Any) -> None:
        self.handler: logging.Handler | None = None
        self.level = logging.NOTSET
        self.start = time.perf_counter()
        self.first_epoch = trainer.epoch
        self.last = self.start
        self.step_times: dict[str, list[float]] = {"meta": [], "fusion": []}
        self.estimated = False


def planned_steps(trainer: Any) -> tuple[int, int]:
    """``(meta steps, fusion steps)`` one epoch of ``trainer`` will take."""
    cfg = trainer.config
    meta = 0 if (cfg.fixed_weights or cfg.discriminative) else cfg.meta_steps
    if not cfg.separate_fusion_phase:
        fusion = 0
    elif cfg.fusion_steps is not None:
        fusion = cfg.fusion_steps
    else:
        fusion = math.ceil(len(trainer.train_set) / cfg.batch_size)
    return meta, fusion


def duration(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``2.1 h``."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def epoch_line(epoch: int, epochs: int, metrics: Mapping[str, float], eta: float | None = None) -> str:
    """One aligned line: both phases' losses, source weights, G's entropy, validation metrics, time and ETA.

    Per-class validation metrics (names with a dot, e.g. ``IoU.3``) stay in ``results.csv`` only."""
    parts = [f"epoch {epoch:>{len(str(epochs))}}/{epochs}"]
    shown = (
        ("meta", ("meta/task_loss", "meta/fusion_loss"), ("task", "fusion")),
        ("F/T", ("fusion/fusion_loss", "fusion/task_loss"), ("fusion", "task")),
    )
    for label, keys, names in shown:
        values = [f"{n} {metrics[k]:7.4f}" for k, n in zip(keys, names) if k in metrics]
        if values:
            parts.append(f"{label}: " + " ".join(values))
    weights = [k for k in metrics if k.startswith("weight/")]
    if weights:
        parts.append("w: " + " ".join(f"{metrics[k]:.3f}" for k in weights))
    entropy = [k for k in metrics if "entropy" in k.lower() and not k.startswith("val/")]
    if entropy:
        parts.append("G entropy: " + " ".join(f"{metrics[k]:.3f}" for k in entropy))
    val = [k for k in metrics if k.startswith("val/") and k != "val/best_epoch" and "." not in k]
    if val:
        parts.append("val: " + " ".join(f"{k.rsplit('/', 1)[1]} {metrics[k]:7.4f}" for k in val))
    seconds = metrics.get("epoch_seconds")
    if seconds is not None:
        parts.append(f"{duration(seconds):>8}")
    if eta is not None:
        parts.append(f"ETA {duration(eta)}")
    return " | ".join(parts)


def write_results_csv(path: str | Path, history: Sequence[Mapping[str, float]]) -> Path:
    """``results.csv`` with one row per epoch (``epoch`` first, then every key in order of first appearance)."""
    path = Path(path)
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["epoch", *columns])
        for epoch, row in enumerate(history, start=1):
            writer.writerow([epoch, *(_cell(row.get(k)) for k in columns)])
    tmp.replace(path)
    return path


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def read_results_csv(path: str | Path) -> list[dict[str, float]]:
    """Rows of a ``results.csv`` as dicts of floats (empty cells left out)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]


def plot_results(path: str | Path, history: Sequence[Mapping[str, float]]) -> Path | None:
    """``results.png``: one small plot per column against the epoch; ``None`` without matplotlib or data."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns and k != "val/best_epoch"]
    if not columns:
        return None
    cols = 4
    rows = math.ceil(len(columns) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    epochs = list(range(1, len(history) + 1))
    for ax, key in zip(axes.flat, columns):
        xs = [e for e, row in zip(epochs, history) if key in row]
        ys = [row[key] for row in history if key in row]
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2)
        ax.set_title(key, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(columns) :]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------- hooks
@hookimpl
def tdfusion_on_run_start(trainer: Any, config: Any) -> None:
    state = _STATE[id(trainer)] = _RunState(trainer)
    if trainer.out_dir is not None:
        handler = logging.FileHandler(trainer.out_dir / "train.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.INFO)
        root = logging.getLogger("tdfusion_core")
        root.addHandler(handler)
        state.level = root.level
        if root.getEffectiveLevel() > logging.INFO:
            root.setLevel(logging.INFO)
        state.handler = handler
    meta, fusion = planned_steps(trainer)
    remaining = config.epochs - trainer.epoch
    switch = " (x2 with the Switch)" if config.switch else ""
    log.info(
        "plan: %d epoch(s) left of %d; per epoch %d meta step(s) and %d fusion step(s) of batch %d%s on %s",
        remaining,
        config.epochs,
        meta,
        fusion,
        config.batch_size,
        switch,
        trainer.device,
    )


def _step(trainer: Any, phase: str) -> None:
    state = _STATE.get(id(trainer))
    if state is None:
        return
    now = time.perf_counter()
    state.step_times[phase].append(now - state.last)
    state.last = now
    if state.estimated:
        return
    plan = dict(zip(("meta", "fusion"), planned_steps(trainer)))
    active = [p for p, n in plan.items() if n > 0]
    if not active or any(len(state.step_times[p]) < min(plan[p], 1 + ESTIMATE_AFTER) for p in active):
        return
    each = {p: _per_step(state.step_times[p]) for p in active}
    per_epoch = sum(each[p] * plan[p] for p in active)
    left = trainer.config.epochs - state.first_epoch
    log.info(
        "estimate: %s; about %s per epoch, %s for the %d epoch(s) left",
        ", ".join(f"{p} step {each[p]:.2f} s" for p in active),
        duration(per_epoch),
        duration(per_epoch * left),
        left,
    )
    state.estimated = True


def _per_step(times: list[float]) -> float:
    """Mean step time, leaving out the first step (warm-up) when there are others."""
    rest = times[1:] if len(times) > 1 else times
    return sum(rest) / len(rest)


@hookimpl
def tdfusion_on_epoch_start(trainer: Any, epoch: int) -> None:
    state = _STATE.get(id(trainer))
    if state is not None:
        state.last = time.perf_counter()


@hookimpl
def tdfusion_on_meta_step_end(trainer: Any, step: int, metrics: Mapping[str, float]) -> None:
    _step(trainer, "meta")


@hookimpl
def tdfusion_on_fusion_step_end(trainer: Any, step: int, metrics: Mapping[str, float]) -> None:
    _step(trainer, "fusion")


@hookimpl
def tdfusion_on_epoch_end(trainer: Any, epoch: int, metrics: Mapping[str, float]) -> None:
    state = _STATE.get(id(trainer))
    eta = None
    if state is not None:
        done = epoch + 1 - state.first_epoch
        eta = (time.perf_counter() - state.start) / max(done, 1) * (trainer.config.epochs - epoch - 1)
    log.info("%s", epoch_line(epoch + 1, trainer.config.epochs, metrics, eta))
    if trainer.out_dir is None:
        return
    history = list(trainer.history)
    if not history or history[-1] is not metrics:
        history.append(dict(metrics))
    write_results_csv(trainer.out_dir / "results.csv", history)
    try:
        plot_results(trainer.out_dir / "results.png", history)
    except Exception as exc:  # a plot must never stop a run
        log.warning("results.png not written: %s: %s", type(exc).__name__, exc)


@hookimpl
def tdfusion_on_run_end(trainer: Any, status: str) -> None:
    state = _STATE.pop(id(trainer), None)
    if state is None:
        return
    log.info("run %s after %s", status, duration(time.perf_counter() - state.start))
    if state.handler is not None:
        root = logging.getLogger("tdfusion_core")
        root.removeHandler(state.handler)
        root.setLevel(state.level)
        state.handler.close()
