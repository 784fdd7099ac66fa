"""The experiment runner: statistics on known answers, cells cached and resumed, the oracle, the CLI."""

from __future__ import annotations

import json
import math
import random

import attrs
import pytest
import torch
from click.testing import CliRunner

from tdfusion_core.apps.experiment import (
    Budget,
    ExperimentSpec,
    Method,
    builtin_method,
    oracle_image,
    run_experiment,
    summarise,
    write_reports,
)
from tdfusion_core.commands.cli import build_cli
from tdfusion_core.training.generator_stats import preference_scores
from tests.torch_threads import one_torch_thread  # noqa: F401

TINY = Budget(1, 1, 1, 3, downstream_batch=2, n_train=4, n_test=3, size=(32, 40), crop=32)


def _spec(tmp_path, methods, seeds=(0, 1, 2, 3, 4), **kw):
    return ExperimentSpec(out=tmp_path, methods=list(methods), seeds=list(seeds), budget=TINY, **kw)


def _cells(values: dict[str, list[float]]) -> list[dict]:
    return [
        {"method": m, "seed": s, "task_metrics": {"mIoU": v}, "fusion_metrics": {"EN": 6.0}}
        for m, vs in values.items()
        for s, v in enumerate(vs)
    ]


def test_a_method_better_by_construction_is_reported_ahead_and_identical_ones_not_distinguishable(tmp_path):
    rng = random.Random(0)
    seed_effect = [rng.uniform(0.3, 0.6) for _ in range(5)]  # what every method shares at a seed
    values = {
        "TDFusion": seed_effect,
        "Better": [v + 0.04 + rng.gauss(0, 0.005) for v in seed_effect],
        "Same": list(seed_effect),
        "Worse": [v - 0.04 + rng.gauss(0, 0.005) for v in seed_effect],
    }
    spec = _spec(tmp_path, [Method(m, "source", source=0) for m in values])
    summary = summarise(spec, _cells(values))
    c = summary["comparisons"]
    assert summary["reference"] == "TDFusion" and summary["primary"] == "mIoU"
    assert c["Better"]["verdict"] == "ahead" and c["Better"]["low"] < 0.04 < c["Better"]["high"]
    assert c["Worse"]["verdict"] == "behind" and c["Same"]["verdict"] == "not distinguishable"
    assert c["Same"]["mean"] == 0 and c["Same"]["p_value"] == 1.0
    # unpaired intervals overlap (the seed spread is large); the paired test still sees the gain
    row = summary["methods"]
    assert row["Better"]["mIoU"]["mean"] - row["Better"]["mIoU"]["half_width"] < row["TDFusion"]["mIoU"]["mean"]
    paths = write_reports(spec, summary)
    report = paths["markdown"].read_text()
    assert "Better is ahead of TDFusion on mIoU" in report and "Same and TDFusion are not distinguishable" in report
    assert "| Better | +0.0" in report
    assert json.loads(paths["json"].read_text())["comparisons"]["Worse"]["verdict"] == "behind"
    assert "Better,TDFusion,mIoU" in paths["comparison"].read_text()


def test_oracle_takes_each_region_from_the_source_that_shows_it():
    sources = torch.stack([torch.full((4, 5), 0.8), torch.full((4, 5), 0.2)])
    only = torch.zeros(4, 5, dtype=torch.uint8)
    only[0, :2], only[1, :3] = 1, 2
    out = oracle_image(sources, only)
    assert out.shape == (1, 4, 5)
    assert torch.allclose(out[0, 0, :2], torch.tensor(0.8)) and torch.allclose(out[0, 1, :3], torch.tensor(0.2))
    assert torch.allclose(out[0, 3], torch.tensor(0.5))


class _PositionBiased(torch.nn.Module):
    """Weights 0.9 for whatever source comes first: a pure position preference."""

    def forward(self, x):
        w = torch.full_like(x, 0.1)
        w[:, 0] = 0.9
        return w


class _Modality(torch.nn.Module):
    """Prefers the brighter source per pixel: depends on content only."""

    def forward(self, x):
        return (10 * x).softmax(dim=1)


def test_preference_score_tells_position_bias_from_a_modality_preference():
    x = torch.stack([torch.full((1, 6, 6), 0.9), torch.full((1, 6, 6), 0.1)], dim=1)  # infrared bright here
    only = torch.ones(1, 6, 6, dtype=torch.uint8)
    p = preference_scores(_PositionBiased(), x, only)
    assert p["infrared_pref"] == 1.0 and p["swapped_infrared_pref"] == 0.0  # flips with the order
    assert p["visible_pref"] is None
    q = preference_scores(_Modality(), x, only)
    assert q["infrared_pref"] == q["swapped_infrared_pref"] == 1.0
    assert q["min_source_weight"] == pytest.approx(q["swapped_min_source_weight"])


def test_cells_run_once_are_cached_and_rerun_when_their_settings_change(tmp_path):
    methods = [builtin_method("ir"), builtin_method("mean"), builtin_method("oracle")]
    spec = _spec(tmp_path, methods, seeds=(0, 1), fusion_metrics=("EN",), task_options={"input_kind": "luminance"})
    lines: list[str] = []
    summary = run_experiment(spec, echo=lines.append)
    assert set(summary["methods"]) == {"Infrared only", "Mean rule", "Oracle (upper reference)"}
    assert summary["reference"] == "Infrared only" and summary["seeds"] == [0, 1]
    assert any("left" in line for line in lines)  # progress with an estimate of the time left
    cell = tmp_path / "cells" / "Mean_rule" / "seed1.json"
    first = json.loads(cell.read_text())
    assert 0 <= first["task_metrics"]["mIoU"] <= 1 and math.isfinite(first["fusion_metrics"]["EN"])
    for name in ("report.md", "results.csv", "comparison.csv", "results.json"):
        assert (tmp_path / name).stat().st_size > 50
    lines.clear()
    again = run_experiment(spec, echo=lines.append)
    assert sum("cached" in line for line in lines) == 6 and again["methods"] == summary["methods"]
    lines.clear()
    run_experiment(attrs.evolve(spec, budget=attrs.evolve(TINY, downstream_steps=4)), lines.append)
    assert not any("cached" in line for line in lines)  # another downstream budget: every cell again


def test_trained_methods_record_g_preference_in_both_orders(tmp_path):
    spec = _spec(
        tmp_path,
        [builtin_method("tdfusion")],
        seeds=(0,),
        fusion_metrics=(),
        task_options={"input_kind": "luminance", "width": 4},
        data_options={"balanced": True},
        train_options={"loss_generator_options": {"dim": 8, "num_blocks": 1, "heads": 2}},
    )
    summary = run_experiment(spec, echo=lambda s: None)
    cell = json.loads((tmp_path / "cells" / "TDFusion" / "seed0.json").read_text())
    pref = cell["preference"]
    for key in ("infrared_pref", "swapped_infrared_pref", "visible_pref", "swapped_visible_pref"):
        assert 0.0 <= pref[key] <= 1.0
    assert 0.0 <= cell["history"]["meta/g/entropy"] <= 1.0 and "meta/g/swapped/weight/source0" in cell["history"]
    assert "infrared_pref" in summary["methods"]["TDFusion"]


def test_cli_runs_and_reports(tmp_path):
    out = tmp_path / "exp"
    result = CliRunner().invoke(
        build_cli(),
        [
            "experiment", "--out", str(out), "--methods", "vis,max", "--seeds", "0,3", "--budget", "smoke",
            "--downstream-steps", "2", "--fusion-metrics", "none", "--data-option", "n=3",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "report:" in result.output and (out / "report.md").is_file()
    assert json.loads((out / "results.json").read_text())["seeds"] == [0, 3]
    bad = CliRunner().invoke(build_cli(), ["experiment", "--out", str(out), "--methods", "nope"])
    assert bad.exit_code != 0 and "unknown method 'nope'" in bad.output
