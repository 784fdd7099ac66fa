"""Multi-process training on CPU (gloo, 127.0.0.1): 2 processes equal 1 process on the union of their shards,
checkpoints resume across world sizes, rank 0 alone writes; sharding and the synchronised meta step in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tdfusion_core.kernel.meta import MetaStep, adam_task_step
from tdfusion_core.training.distributed import DistContext, DistributedMetaStep, average_tensors
from tests.dist_worker import float64_trainer as _float64_trainer
from tests.dist_worker import free_port, run_scenarios, torchrun_env, trainer_state
from tests.torch_threads import one_torch_thread  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
NAN_ITEM = 5


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[m][k].double() - b[m][k].double()).abs().max()) for m in a for k in a[m])


# ---------------------------------------------------------------------------------------------------- in-process
@pytest.mark.parametrize("mode", ["jvp", "double-backward", "finite-difference"])
def test_distributed_meta_step_with_one_process_is_the_meta_step(mode):
    trainer = _float64_trainer(meta_mode=mode)
    gen = torch.Generator().manual_seed(0)
    crop, mtr = trainer.batcher.whole([trainer.train_set[i] for i in (0, 1)], gen)
    _, mts = trainer.batcher.whole([trainer.train_set[i] for i in (2, 3)], gen)
    args = (trainer.fusion_net, trainer.loss_generator, trainer.task, trainer.fusion_loss, mode)
    update = adam_task_step(trainer.opt_task, trainer.task.network)
    ref = MetaStep(*args).compute(crop, mtr, mts, 1e-2, update)
    for sync in ("union", "per-shard"):
        got = DistributedMetaStep(*args, ctx=DistContext(), sync=sync).compute(crop, mtr, mts, 1e-2, update)
        assert got.finite and ref.finite
        scale = max(float(g.abs().max()) for g in ref.grad_g.values())
        assert scale > 0
        for name, g in ref.grad_g.items():
            assert torch.allclose(got.grad_g[name], g, rtol=0, atol=1e-10 * scale), (mode, name)
        assert abs(float(got.task_loss - ref.task_loss)) < 1e-12
        for name, p in ref.fusion_params.items():
            assert torch.allclose(got.fusion_params[name], p, rtol=0, atol=1e-12)


def test_average_tensors_without_processes_copies():
    t = {"a": torch.ones(2), "b": torch.zeros(3, dtype=torch.float64)}
    out = average_tensors(t, DistContext())
    assert all(torch.equal(out[k], t[k]) and out[k] is not t[k] for k in t)


# ---------------------------------------------------------------------------------------------------- 2 processes
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One spawn of 2 gloo processes running several scenarios; reference runs in this process."""
    root = tmp_path_factory.mktemp("dist")
    torch.set_num_threads(1)
    single1 = _float64_trainer(root / "single1")
    initial = trainer_state(single1)
    single1.fit()
    scenarios = [
        {"name": "union", "out_dir": str(root / "two1")},
        {"name": "per_shard", "meta_sync": "per-shard"},
        {"name": "double_backward", "meta_mode": "double-backward", "fusion_steps": 1},
        {"name": "resume_2_from_1", "out_dir": str(root / "single1_copy"), "resume": True, "epochs": 2},
        # one sample's sources are NaN; without the Switch it is in one process's shard only
        {"name": "nan", "switch": False, "nan_item": NAN_ITEM, "meta_steps": 4, "fusion_steps": 4},
    ]
    (root / "single1_copy" / "checkpoints").mkdir(parents=True)
    (root / "single1_copy" / "checkpoints" / "last.pt").write_bytes(
        (root / "single1" / "checkpoints" / "last.pt").read_bytes()
    )
    mp.spawn(run_scenarios, args=(2, free_port(), scenarios, str(root)), nprocs=2, join=True)
    return {
        "root": root,
        "initial": initial,
        "single1": trainer_state(single1),
        "single1_history": single1.history,
        "two": {s["name"]: [torch.load(root / f"{s['name']}.rank{r}.pt") for r in range(2)] for s in scenarios},
    }


def test_two_processes_update_g_f_and_t_as_one_process_on_the_union(runs):
    rank0, rank1 = runs["two"]["union"]
    assert _max_diff(runs["initial"], runs["single1"]) > 1e-3  # the updates are not trivial
    for module in ("loss_generator", "fusion_net", "task_net"):
        diff = _max_diff({module: rank0["state"][module]}, {module: runs["single1"][module]})
        print(f"{module}: max |2 processes - 1 process| = {diff:.2e}")
        assert diff < 1e-6, (module, diff)
    assert _max_diff(rank0["state"], rank1["state"]) < 1e-12  # every process holds the same parameters
    assert _max_diff(_opt_states(rank0), _opt_states(rank1)) < 1e-12  # and the same optimizer state of T
    # the losses logged by the 2-process run are those of the union
    for key in ("meta/task_loss", "meta/fusion_loss", "meta/inner_task_loss", "fusion/fusion_loss", "fusion/task_loss"):
        assert abs(rank0["history"][0][key] - runs["single1_history"][0][key]) < 1e-9, key


def _opt_states(saved):
    return {str(i): {k: torch.as_tensor(v) for k, v in s.items()} for i, s in saved["opt_task"]["state"].items()}


def test_per_shard_sync_averages_shard_meta_gradients_not_the_union(runs):
    rank0, rank1 = runs["two"]["per_shard"]
    assert _max_diff(rank0["state"], rank1["state"]) < 1e-12
    # the released T' rule steps T's real optimizer in the meta phase: its state advanced alike in both processes
    assert _max_diff(_opt_states(rank0), _opt_states(rank1)) < 1e-12
    g_union = {"g": runs["single1"]["loss_generator"]}
    assert _max_diff({"g": rank0["state"]["loss_generator"]}, g_union) > 1e-6


def test_double_backward_mode_matches_one_process(runs):
    single = _float64_trainer(meta_mode="double-backward", fusion_steps=1)
    single.fit()
    rank0, _ = runs["two"]["double_backward"]
    assert _max_diff(rank0["state"], trainer_state(single)) < 1e-6


def test_resume_across_world_sizes(runs):
    reference = _float64_trainer(epochs=2)
    reference.fit()
    expected = trainer_state(reference)
    # saved by 1 process, resumed by 2
    resumed_by_two = runs["two"]["resume_2_from_1"][0]
    assert resumed_by_two["epoch"] == 2
    assert _max_diff(resumed_by_two["state"], expected) < 1e-6
    # saved by 2 processes, resumed by 1 (in a copy: the original run directory is checked below)
    saved = runs["root"] / "two1" / "checkpoints" / "last.pt"
    ckpt = torch.load(saved, weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == 1
    copy = runs["root"] / "two1_copy"
    (copy / "checkpoints").mkdir(parents=True)
    (copy / "checkpoints" / "last.pt").write_bytes(saved.read_bytes())
    resumed_by_one = _float64_trainer(copy, resume=True, epochs=2)
    assert resumed_by_one.epoch == 1
    resumed_by_one.fit()
    assert _max_diff(trainer_state(resumed_by_one), expected) < 1e-6


def test_a_non_finite_shard_skips_the_step_in_every_process(runs):
    """A NaN in one process's shard: both processes skip the same steps (no hang), as one process on the union."""
    single = _float64_trainer(switch=False, nan_item=NAN_ITEM, meta_steps=4, fusion_steps=4)
    with pytest.warns(RuntimeWarning, match="non-finite") as caught:
        single.fit()
    phases = {str(w.message).split(":")[0] for w in caught}
    assert {"meta phase", "fusion phase (F step)"} <= phases  # both phases met the bad sample
    rank0, rank1 = runs["two"]["nan"]
    assert _max_diff(rank0["state"], rank1["state"]) < 1e-12
    assert _max_diff(rank0["state"], trainer_state(single)) < 1e-6
    assert _max_diff(rank0["state"], runs["initial"]) > 1e-3  # the good steps were taken


def test_only_rank_zero_writes_the_run_directory(runs):
    run = runs["root"] / "two1"
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.pt").is_file()
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1  # one writer, not one per process
    assert not list((run / "checkpoints").glob(".*tmp*"))


@pytest.mark.slow  # three Python processes importing torch: ~50 s on a busy 2-core machine
def test_tdfusion_train_runs_unchanged_under_torchrun(tmp_path):
    """The real launcher: `python -m torch.distributed.run --nproc_per_node=2 $(which tdfusion) train ...`."""
    script = Path(sys.executable).with_name("tdfusion")
    assert script.is_file(), f"the tdfusion console script is not installed beside {sys.executable}"
    env = {k: v for k, v in os.environ.items() if k not in torchrun_env(0, 1, 0)}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"
    small = "{dim: 4, num_blocks: 1, heads: 1}"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        str(script), "train", "--data", "synthetic", "--out", str(tmp_path / "run"),
        "--epochs", "1", "--meta-steps", "1", "--fusion-steps", "1",
        "--set", "data_options={n: 4, size: [24, 32]}", "--set", "task_options={width: 4}",
        "--set", f"fusion_options={small}", "--set", f"loss_generator_options={small}",
        "--set", "crop_size=16", "--set", "task_size=[24, 32]", "--set", "progress=false",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "run"
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == 1 and ckpt["meta_step"] == 1
    assert (run / "model.pt").is_file() and (run / "config.yaml").is_file()
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1


@pytest.mark.slow  # spawns 1 then 2 processes that each import DistributedDataParallel (~20 s apiece here)
def test_bench_scaling_reports_both_process_counts():
    from click.testing import CliRunner

    from tdfusion_core.commands.cli import build_cli

    args = ["bench", "scaling", "--json", "--steps", "1", "--warmup", "0", "--size", "24x32", "--crop", "16x16"]
    result = CliRunner().invoke(build_cli(), [*args, "--task-size", "24x32", "--scaling", "weak"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    rows = report["rows"]
    assert [r["processes"] for r in rows] == [1, 2] and [r["global_batch"] for r in rows] == [2, 4]
    assert [r["items_per_process"] for r in rows] == [4, 4]  # weak scaling: the same share per process
    assert rows[0]["efficiency"] == 1.0 and rows[1]["meta_step_ms"] > 0 and rows[1]["cpu_efficiency"] > 0


def test_the_old_sampler_names_say_where_the_sampler_went():
    import tdfusion_core.training.distributed as distributed

    for old in ("DistributedMetaSampler", "MetaBatchSampler"):
        with pytest.raises(AttributeError, match=r"tdfusion_core\.data\.sampling\.StepSampler"):
            getattr(distributed, old)
