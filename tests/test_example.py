"""examples/run_custom_task.py: its task honours the Task contract, and the script trains and reports on a tiny budget."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from tdfusion_core.data import SyntheticScenes
from tdfusion_core.kernel.task import check_task_class, functional_task_loss
from tests.conftest import REPO
from tests.torch_threads import one_torch_thread  # noqa: F401

SCRIPT = REPO / "examples" / "run_custom_task.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("run_custom_task", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_density_targets_hold_one_unit_of_mass_per_warm_object(example):
    boxes = [
        torch.tensor(
            [[0, 2.0, 3.0, 10.0, 20.0], [1, 20.0, 5.0, 40.0, 15.0], [2, 0.0, 0.0, 5.0, 5.0]]
        ),  # 2 warm, 1 cold
        torch.zeros(0, 5),
        torch.tensor([[0, 30.0, 10.0, 30.4, 10.2]]),  # thinner than a pixel: still one unit of mass
    ]
    density = example.density_targets(boxes, (24, 48), torch.device("cpu"))
    assert density.shape == (3, 1, 24, 48)
    assert torch.allclose(density.sum(dim=(1, 2, 3)), torch.tensor([2.0, 0.0, 1.0]))
    assert float(density[0, 0, 0:3, 0:5].sum()) == 0.0  # the cold object adds nothing


def test_task_follows_the_contract(example):
    check_task_class(example.WarmCountTask)
    task = example.WarmCountTask(num_classes=3)
    scenes = SyntheticScenes(n=2, size=(32, 40), target="boxes")
    images = torch.stack([scenes[i].sources[1:2] for i in range(2)]).requires_grad_(True)  # luminance input
    targets = task.collate_targets([scenes[i].target for i in range(2)])
    loss = task.compute_loss(task.network, images, targets)
    assert loss.ndim == 0 and math.isfinite(float(loss.detach()))
    (grad,) = torch.autograd.grad(loss, images)
    assert grad.abs().sum() > 0
    # T' is evaluated with substituted parameters: zero weights and biases give softplus(0) everywhere
    zeros = {name: torch.zeros_like(p) for name, p in task.network.named_parameters()}
    with torch.no_grad():
        density = torch.func.functional_call(task.network, zeros, (images,))
    assert torch.allclose(density, torch.full_like(density, math.log(2.0)))
    assert not torch.equal(
        functional_task_loss(task, images.detach(), targets, params=zeros),
        task.compute_loss(task.network, images, targets),
    )
    task.network.train()
    metrics = task.evaluate(task.network, [(images.detach(), targets)])
    assert set(metrics) == {"count_MAE", "count_RMSE", "count_accuracy"}
    assert metrics["count_RMSE"] >= metrics["count_MAE"] >= 0 and task.network.training


def test_script_trains_and_prints_weight_statistics():
    args = ["--epochs", "1", "--meta-steps", "2", "--fusion-steps", "2", "--size", "64x80"]
    args += ["--train-scenes", "6", "--val-scenes", "4", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=900, env=env, check=False
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "task WarmCountTask from the registry" in out
    assert re.search(r"^epoch 1: meta task loss \d", out, re.M), out
    match = re.search(r"mean source weights: ir ([\d.]+), vi ([\d.]+)", out)
    assert match, out
    w_ir, w_vi = float(match.group(1)), float(match.group(2))
    assert 0 < w_ir < 1 and abs(w_ir + w_vi - 1) < 2e-3
    for region in ("warm objects", "markings", "cold objects", "background"):
        row = re.search(rf"^  {region}\s+(.*)$", out, re.M)
        assert row, f"no row for {region}:\n{out}"
        values = [float(v) for v in re.findall(r"(\d\.\d{3}) \(", row.group(1))]
        assert values and all(0 < v < 1 for v in values)
    evaluation = re.search(
        r"held-out evaluation: count_MAE ([\d.]+), count_RMSE ([\d.]+), count_accuracy ([\d.]+)", out
    )
    assert evaluation, out
    mae, rmse, acc = (float(v) for v in evaluation.groups())
    assert 0 <= mae <= rmse and 0 <= acc <= 1
