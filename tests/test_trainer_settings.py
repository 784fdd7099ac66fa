"""Each training setting has the effect it promises: G's update rule, the checkpoint interval, F's inner learning
rate, the LR schedule, mixed precision, the T' rule and SyncBatchNorm (small modules, CPU)."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn as nn

from tdfusion_core import hookimpl
from tdfusion_core.kernel.meta import MetaStep, sgd_task_step
from tdfusion_core.training.distributed import DistContext, convert_sync_batchnorm
from tests.conftest import plugin_registered
from tests.dist_worker import float64_trainer
from tests.trainer_utils import small_trainer

LR_G = 1e-2


def _params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _flat(d: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in d.values()])


def _g_step(**overrides) -> tuple[torch.Tensor, torch.Tensor]:
    """(G's parameters before, G's change) after one meta step of epoch 0 (the same meta-gradient every time;
    float64, so that even a plain gradient step on G is far above rounding)."""
    settings = dict(epochs=1, meta_steps=1, task_step="sgd", lr_generator=LR_G)
    settings.update(overrides)
    trainer = float64_trainer(**settings)
    before = _params(trainer.loss_generator)
    trainer.meta_phase(0)
    after = _params(trainer.loss_generator)
    return _flat(before), _flat(after) - _flat(before)


# ---------------------------------------------------------------------------------------------------- G's update
def test_generator_update_rules_apply_their_own_step():
    g0, maxnorm = _g_step(generator_update="maxnorm")
    _, sgd = _g_step(generator_update="sgd")
    _, adam = _g_step(generator_update="adam")
    _, adamw = _g_step(generator_update="adamw")
    # maxnorm: θ −= lr·g/max|g|, so the largest change is the learning rate
    assert float(maxnorm.abs().max()) == pytest.approx(LR_G, rel=1e-5)
    # sgd: θ −= lr·g, the same direction scaled by max|g| (≠ 1 here)
    scale = float(sgd.abs().max()) / LR_G
    assert abs(scale - 1) > 1e-3
    assert torch.allclose(sgd, maxnorm * scale, rtol=1e-4, atol=1e-9)
    # adam, first step: θ −= lr·m̂/(√v̂ + ε) = lr·sign(g)
    moved = maxnorm.abs() > 1e-4 * LR_G
    assert int(moved.sum()) > 0
    assert torch.allclose(adam[moved], LR_G * torch.sign(maxnorm[moved]), rtol=1e-4)
    # adamw: the same plus decoupled weight decay (torch's default 0.01): θ ← θ(1 − lr·0.01) − lr·sign(g)
    assert torch.allclose(adamw[moved], adam[moved] - LR_G * 0.01 * g0[moved], rtol=1e-4, atol=1e-9)
    assert not torch.allclose(adamw, adam)


def test_generator_update_builds_the_named_optimizer():
    for rule, kind in (("maxnorm", torch.optim.Adam), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)):
        assert type(small_trainer(generator_update=rule).opt_generator) is kind
    assert type(small_trainer(generator_update="adamw").opt_generator) is torch.optim.AdamW


# ---------------------------------------------------------------------------------------------------- inner lr
def test_inner_lr_replaces_fs_learning_rate_in_the_meta_step():
    _, default = _g_step(lr_fusion=1e-2)
    _, same = _g_step(lr_fusion=1e-2, inner_lr=1e-2)
    _, larger = _g_step(lr_fusion=1e-2, inner_lr=0.5, generator_update="sgd")
    _, default_sgd = _g_step(lr_fusion=1e-2, generator_update="sgd")
    assert torch.equal(default, same)
    # the meta-gradient is −η·∂⟨∇Lf, v⟩/∂θG: a 50x larger η gives a much larger G step
    assert float(larger.abs().max()) > 10 * float(default_sgd.abs().max())


# ---------------------------------------------------------------------------------------------------- schedule
class _GRecorder:
    def __init__(self) -> None:
        self.states: list[torch.Tensor] = []
        self.saved: list[int] = []

    @hookimpl
    def tdfusion_on_meta_step_end(self, trainer, step, metrics):
        self.states.append(_flat(_params(trainer.loss_generator)))

    @hookimpl
    def tdfusion_on_checkpoint_saved(self, trainer, path, epoch):
        self.saved.append(epoch)


@pytest.fixture
def g_recorder():
    with plugin_registered(_GRecorder(), "g-recorder") as rec:
        yield rec


def test_lr_schedule_steps_every_lr_step_size_epochs_by_lr_gamma(g_recorder):
    trainer = small_trainer(epochs=3, meta_steps=1, fusion_steps=1, lr_step_size=2, lr_gamma=0.5, task_step="sgd")
    g0 = _flat(_params(trainer.loss_generator))
    history = trainer.fit()
    for key in ("lr/fusion", "lr/task", "lr/generator"):  # after each epoch's scheduler step
        assert [h[key] for h in history] == pytest.approx([1e-2, 5e-3, 5e-3])
    assert trainer.opt_fusion.param_groups[0]["lr"] == pytest.approx(5e-3)
    # the maxnorm step of G uses the scheduled learning rate: 1e-2, 1e-2, then 5e-3
    states = [g0, *g_recorder.states]
    steps = [float((b - a).abs().max()) for a, b in itertools.pairwise(states)]
    assert steps == pytest.approx([1e-2, 1e-2, 5e-3], rel=1e-4)


def test_checkpoint_every_sets_the_interval_and_the_last_epoch_is_always_saved(tmp_path, g_recorder):
    trainer = small_trainer(tmp_path, epochs=3, meta_steps=0, fusion_steps=1, checkpoint_every=2, log_images=False)
    trainer.fit()
    assert g_recorder.saved == [2, 3]
    state = torch.load(trainer.checkpoint_path, weights_only=True)
    assert state["epoch"] == 3


# ---------------------------------------------------------------------------------------------------- amp
def _fusion_output_dtypes(**overrides) -> dict[str, set[torch.dtype]]:
    trainer = small_trainer(epochs=1, meta_steps=1, fusion_steps=1, task_step="sgd", **overrides)
    seen: dict[str, set[torch.dtype]] = {"meta": set(), "fusion": set()}
    phase = ["meta"]
    trainer.fusion_net.register_forward_hook(lambda m, i, out: seen[phase[0]].add(out.dtype))
    meta = trainer.meta_phase(0)
    phase[0] = "fusion"
    fusion = trainer.fusion_phase(0)
    assert all(torch.isfinite(torch.tensor(v)) for v in {**meta, **fusion}.values())
    return seen


def test_amp_runs_both_phases_in_bfloat16():
    assert _fusion_output_dtypes(amp=False) == {"meta": {torch.float32}, "fusion": {torch.float32}}
    amp = _fusion_output_dtypes(amp=True)
    assert torch.bfloat16 in amp["meta"] and torch.bfloat16 in amp["fusion"]


# ---------------------------------------------------------------------------------------------------- T' rule
def test_task_step_sgd_takes_t_prime_by_plain_gradient_descent():
    trainer = float64_trainer(epochs=1, meta_steps=1, task_step="sgd", generator_update="sgd", lr_generator=LR_G)
    generator_before = copy.deepcopy(trainer.loss_generator)
    calls = []
    original = trainer.meta_update

    def spy(*args):
        calls.append(args)
        return original(*args)

    trainer.meta_update = spy
    g0 = _flat(_params(trainer.loss_generator))
    trainer.meta_phase(0)
    change = _flat(_params(trainer.loss_generator)) - g0
    (crop, mtr, mts) = calls[0]
    lr_f, lr_t = trainer.config.lr_fusion, trainer.config.lr_task
    step = MetaStep(trainer.fusion_net, generator_before, trainer.task, trainer.fusion_loss, "jvp")
    expected = _flat(step.compute(crop, mtr, mts, lr_f, sgd_task_step(lr_t)).grad_g)
    assert torch.allclose(change, -LR_G * expected, rtol=1e-8, atol=1e-15)
    # T's own Adam step for T' gives another meta-gradient
    _, adam_change = _g_step(task_step="adam", generator_update="sgd")
    assert not torch.allclose(adam_change, change, rtol=1e-3)


# ---------------------------------------------------------------------------------------------------- SyncBatchNorm
def test_sync_batchnorm_is_refused_on_cpu_in_a_multi_process_run(monkeypatch):
    import tdfusion_core.training.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "init_distributed", lambda *a, **k: DistContext(rank=0, world_size=2))
    with pytest.raises(ValueError, match="sync_batchnorm needs CUDA"):
        small_trainer(sync_batchnorm=True)


def test_sync_batchnorm_converts_the_task_networks_batchnorm_layers():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    converted = convert_sync_batchnorm(net, torch.device("cuda"))
    assert isinstance(converted[1], nn.SyncBatchNorm) and not any(isinstance(m, nn.BatchNorm2d) for m in converted)
    with pytest.raises(ValueError, match="CUDA"):
        convert_sync_batchnorm(net, torch.device("cpu"))


def test_sync_batchnorm_leaves_a_single_process_run_unchanged():
    plain, synced = (
        small_trainer(epochs=1, task_step="sgd"),
        small_trainer(epochs=1, task_step="sgd", sync_batchnorm=True),
    )
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in synced.task.network.modules())
    plain.fit()
    synced.fit()
    for (k, a), b in zip(plain.task.network.state_dict().items(), synced.task.network.state_dict().values()):
        assert torch.equal(a, b), k
