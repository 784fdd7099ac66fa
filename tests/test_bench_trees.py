"""`tdfusion bench trees`: the step worker runs on a tree, and two trees are compared in interleaved processes."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from click.testing import CliRunner

from tdfusion_core.apps.bench import step_worker
from tdfusion_core.apps.bench.trees import format_trees, speedup_interval, trees_command
from tests.torch_threads import one_torch_thread  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
SPEC = {
    "task": "tiny-seg",
    "mode": "jvp",
    "image_size": [24, 32],
    "crop_size": [16, 16],
    "task_size": [24, 32],
    "num_classes": 3,
    "threads": 1,
    "steps": 2,
    "warmup": 0,
    "task_options": {"width": 4},
    "train_options": {"fusion_options": {"dim": 4, "num_blocks": 1, "heads": 2}},
}


def test_the_worker_times_every_step_of_this_tree():
    report = step_worker.run(SPEC)
    for key in ("meta_cpu", "meta_wall", "fusion_cpu", "fusion_wall"):
        assert len(report[key]) == 2 and all(t > 0 for t in report[key])
    assert report["peak_rss_mb"] > 0
    assert Path(report["tree"]).parent == REPO / "tdfusion_core"


def test_two_trees_side_by_side(tmp_path):
    out = tmp_path / "trees.json"
    args = [
        "--tree",
        f"a={REPO}",
        "--tree",
        f"b={REPO}",
        "--task",
        "tiny-seg",
        "--set",
        "width=4",
        "--num-classes",
        "3",
    ]
    args += ["--image-size", "24x32", "--crop-size", "16x16", "--task-size", "24x32", "--rounds", "1", "--steps", "1"]
    args += ["--warmup", "0", "--train-set", "fusion_options={dim: 4, num_blocks: 1, heads: 2}", "--out", str(out)]
    result = CliRunner().invoke(trees_command, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert list(data["trees"]) == ["a", "b"]
    assert data["trees"]["b"]["speedup_over_a"]["meta_cpu"] > 0
    (a,), (b,) = (data["trees"][name]["samples"]["meta_cpu"] for name in "ab")
    assert data["trees"]["b"]["speedup_interval_over_a"]["meta_cpu"] == [round(a / b, 3)] * 2  # one sample each
    assert data["env"]["MALLOC_MMAP_MAX_"] == "0"
    assert "speedup_over_a" in format_trees(data)


def test_a_path_without_the_package_is_refused(tmp_path):
    result = CliRunner().invoke(trees_command, ["--tree", f"a={tmp_path}"])
    assert result.exit_code != 0 and "tdfusion_core" in result.output


def test_the_speedup_interval_holds_the_ratio_of_medians_and_widens_with_the_spread():
    reference = [2.0, 2.2, 1.9, 2.1, 2.4, 2.0]
    tight = [1.0, 1.02, 0.99, 1.01, 1.0, 0.98]
    loose = [0.7, 1.3, 0.9, 1.4, 1.0, 0.8]
    point = statistics.median(reference) / statistics.median(tight)
    low, high = speedup_interval(reference, tight)
    assert low <= point <= high
    assert speedup_interval(reference, tight) == (low, high)  # seeded
    loose_low, loose_high = speedup_interval(reference, loose)
    assert loose_high - loose_low > high - low
    assert speedup_interval([3.0] * 5, [1.5] * 5) == (2.0, 2.0)
