"""The meta phase's one call (MetaPhaseStep: T' rule, meta-gradient, G's update), the trainer's path from the sampler
to G's update, and the pieces split out of the trainer (train_state, inspection, builders)."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch

from tdfusion_core.kernel.meta import apply_maxnorm_update, sgd_task_step
from tdfusion_core.kernel.meta_phase import MetaPhaseStep
from tdfusion_core.training import inspection, train_state
from tests.trainer_utils import small_trainer


def _batches(trainer, step: int = 0):
    return list(trainer.batcher.meta_phase(trainer.train_set, 0, step + 1))[step]


def _g(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.loss_generator.named_parameters()}


def test_one_call_is_the_meta_gradient_then_the_released_maxnorm_update():
    trainer = small_trainer(task_step="sgd", inner_lr=0.05)
    step: MetaPhaseStep = trainer.meta_phase_step
    crop, mtr, mts = _batches(trainer)
    g0 = _g(trainer)
    # the same maths by hand on a copy of the meta step's modules: compute, then θ −= lr·g/max|g|
    expected = copy.deepcopy(trainer.loss_generator)
    reference = copy.deepcopy(step.meta_step)
    reference.loss_generator = expected
    result = reference.compute(crop, mtr, mts, 0.05, sgd_task_step(trainer.config.lr_task))
    apply_maxnorm_update(expected, result.grad_g, trainer.config.lr_generator)

    outcome = step.update(crop, mtr, mts)
    assert outcome.skipped is None
    assert step.eta() == 0.05
    assert {"task_loss", "fusion_loss", "inner_task_loss"} <= set(outcome.metrics)
    for name, p in trainer.loss_generator.named_parameters():
        assert not torch.equal(p, g0[name]) or name not in result.grad_g
        assert torch.allclose(p, dict(expected.named_parameters())[name], rtol=1e-6, atol=1e-9)


def test_a_non_finite_meta_step_leaves_g_unchanged_and_says_why():
    trainer = small_trainer()
    crop, mtr, mts = _batches(trainer)
    g0 = _g(trainer)
    outcome = trainer.meta_phase_step.update(crop * float("nan"), mtr, mts)
    assert outcome.skipped == ("meta phase", "task loss, fusion loss or G gradient")
    assert all(torch.equal(p, g0[n]) for n, p in trainer.loss_generator.named_parameters())


def test_eta_is_fs_scheduled_learning_rate_without_inner_lr():
    trainer = small_trainer(lr_fusion=0.02)
    assert trainer.meta_phase_step.eta() == pytest.approx(0.02)
    trainer.opt_fusion.param_groups[0]["lr"] = 0.007
    assert trainer.meta_phase_step.eta() == pytest.approx(0.007)


def test_bounded_maxnorm_reports_its_step_scale():
    trainer = small_trainer(generator_max_change=1e-9)
    outcome = trainer.meta_phase_step.update(*_batches(trainer))
    assert 0 < outcome.metrics["g/step_scale"] < 1


def test_a_meta_batch_goes_from_the_sampler_to_gs_update_in_two_calls(monkeypatch):
    trainer = small_trainer(epochs=1, meta_steps=2)
    calls: list[str] = []

    def spy(cls, name):  # on the class: the sampler and the steps are slotted attrs classes
        original = getattr(cls, name)

        def wrapped(self, *args, **kwargs):
            calls.append(name)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, wrapped)

    spy(type(trainer.batcher), "meta_phase")
    spy(type(trainer.sampler), "meta_steps")
    spy(type(trainer.batcher), "assemble")
    spy(type(trainer.meta_phase_step), "update")
    spy(type(trainer.meta_phase_step.meta_step), "compute")
    trainer.meta_phase(0)
    # from the trainer: the phase's batches (planned by the sampler once, each step assembled below it as it is
    # iterated: meta-train then meta-test), then per step the whole meta step with compute below it
    step = ["assemble", "assemble", "update", "compute"]
    assert calls == ["meta_phase", "meta_steps", *step, *step]


def test_rng_state_round_trip_restores_every_generator():
    state = train_state.rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    train_state.restore_rng(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_a_state_of_another_format_is_refused():
    trainer = small_trainer()
    state = trainer.state_dict()
    with pytest.raises(ValueError, match="not a tdfusion training checkpoint"):
        trainer.load_state_dict({**state, "format": "other"})


class _Constant(torch.nn.Module):
    def __init__(self, weights: list[float]) -> None:
        super().__init__()
        self.register_buffer("w", torch.tensor(weights))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w.view(1, -1, 1, 1).expand(x.shape[0], -1, *x.shape[-2:])


def test_mean_source_weights_of_a_constant_generator_and_its_mode_restored():
    trainer = small_trainer()
    generator = _Constant([0.25, 0.75]).train()
    means = inspection.mean_source_weights(generator, trainer.train_set, (8, 8), torch.device("cpu"), max_samples=3)
    assert means == pytest.approx([0.25, 0.75])
    assert generator.training


def test_fuse_and_weigh_runs_in_eval_mode_and_restores_the_modes():
    trainer = small_trainer()
    modes: list[bool] = []
    trainer.fusion_net.register_forward_hook(lambda m, i, o: modes.append(m.training))
    sources = torch.rand(2, 2, 8, 8)
    fused, weights = trainer.fuse(sources)
    assert modes == [False] and trainer.fusion_net.training and trainer.loss_generator.training
    assert fused.shape == (2, 1, 8, 8) and float(fused.min()) >= 0 and float(fused.max()) <= 1
    assert torch.allclose(weights.sum(dim=1), torch.ones(2, 8, 8))
