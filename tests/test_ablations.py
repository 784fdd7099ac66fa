"""The paper's Table 3 ablations do what the paper says, checked against hand-made steps (float64, small modules).

I   fixed weights: F's loss uses w = ½ everywhere and G is never touched;
II  α = 0: F's loss has no gradient term;
III task loss on F: F's loss is Lf + λ·Lt(T(F(x))) (T not moved by that term);
IV  no separate fusion phase: F and T are trained inside the meta loop by their optimizers, about as far per epoch
    as the full method's fusion phase moves them;
V   discriminative: the fused image is Σ_k w_k I_k with G's weights, trained by the task loss; no F.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tdfusion_core.kernel.losses import FusionLoss, intensity_loss
from tdfusion_core.kernel.meta import TaskInput
from tdfusion_core.kernel.task import functional_task_loss
from tests.trainer_utils import small_trainer


def _double(trainer):
    for module in (trainer.fusion_net, trainer.loss_generator, trainer.task.network):
        module.double()
    return trainer


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    crop = torch.rand(2, 2, 16, 16, generator=g, dtype=torch.float64)
    sources = torch.rand(2, 2, 24, 32, generator=g, dtype=torch.float64)
    chroma = torch.full((2, 2, 2, 24, 32), 0.5, dtype=torch.float64)
    return crop, TaskInput(sources, chroma, torch.randint(0, 3, (2, 24, 32), generator=g))


def _adam_step_of_f(trainer, loss_of):
    """F after one Adam step (F's learning rate, fresh state) on ``loss_of(F)``, on a copy."""
    net = copy.deepcopy(trainer.fusion_net)
    opt = torch.optim.Adam(net.parameters(), lr=trainer.config.lr_fusion)
    loss_of(net).backward()
    opt.step()
    return {n: p.detach() for n, p in net.named_parameters()}


def _params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _close(a, b):
    return all(torch.allclose(a[n], b[n], rtol=1e-9, atol=1e-12) for n in a)


@pytest.mark.parametrize(
    ("settings", "loss"),
    [
        # I: w = ½ at every pixel
        ({"fixed_weights": True}, lambda t, f, crop, b: FusionLoss()(f(crop), crop, torch.full_like(crop, 0.5))),
        # II: the intensity term alone
        ({"alpha": 0.0}, lambda t, f, crop, b: intensity_loss(f(crop), crop, t.loss_generator(crop).detach())),
        # III: Lf + λ·Lt(T(F(x)))
        (
            {"task_loss_on_fusion": 0.7},
            lambda t, f, crop, b: (
                FusionLoss()(f(crop), crop, t.loss_generator(crop).detach())
                + 0.7 * functional_task_loss(t.task, f(b.sources), b.targets, network=copy.deepcopy(t.task.network))
            ),
        ),
    ],
    ids=["I-fixed-weights", "II-no-gradient-loss", "III-task-loss-on-F"],
)
def test_fusion_step_of_ablation_is_the_papers_loss(settings, loss):
    trainer = _double(small_trainer(epochs=1, **settings))
    crop, batch = _batch()
    expected = _adam_step_of_f(trainer, lambda f: loss(trainer, f, crop, batch))
    t_before = _params(trainer.task.network)
    g_before = _params(trainer.loss_generator)
    assert trainer.fusion_update(crop, batch) is not None
    assert _close(_params(trainer.fusion_net), expected)
    assert _close(_params(trainer.loss_generator), g_before)  # G frozen in the fusion phase
    # T takes its own step on F's detached output, whatever the ablation
    assert not _close(_params(trainer.task.network), t_before)


def test_fixed_weights_are_one_half_everywhere_and_g_is_untouched():
    trainer = small_trainer(epochs=1, fixed_weights=True)
    crop, _ = _batch()
    assert torch.equal(trainer.fusion_step.weights(crop.float()), torch.full_like(crop.float(), 0.5))
    g0 = _params(trainer.loss_generator)
    trainer.fit()
    assert trainer.meta_step_count == 0 and _close(_params(trainer.loss_generator), g0)
    assert trainer.history[0]["weight/source0"] == trainer.history[0]["weight/source1"] == 0.5


def _distance(a, b):
    return float(torch.sqrt(sum(((a[n] - b[n]) ** 2).sum() for n in a)))


def test_ablation_iv_trains_f_and_t_about_as_far_as_the_fusion_phase():
    steps = 4
    full = small_trainer(epochs=1, meta_steps=steps, fusion_steps=steps)
    iv = small_trainer(epochs=1, meta_steps=steps, separate_fusion_phase=False)
    moved = {}
    for name, trainer in (("full", full), ("iv", iv)):
        f0, t0 = _params(trainer.fusion_net), _params(trainer.task.network)
        trainer.fit()
        moved[name] = (_distance(_params(trainer.fusion_net), f0), _distance(_params(trainer.task.network), t0))
    assert iv.fusion_step_count == steps and iv.meta_step_count == steps
    for k, what in enumerate(("F", "T")):
        ratio = moved["iv"][k] / moved["full"][k]
        print(f"ablation IV / fusion phase, distance moved by {what}: {ratio:.3f}")
        assert 0.5 < ratio < 2.0, f"{what} moved {ratio:.3g}x as far in ablation IV as in the fusion phase"


def test_ablation_iv_steps_f_on_lf_with_gs_updated_weights(monkeypatch):
    trainer = _double(small_trainer(epochs=1, separate_fusion_phase=False))
    crop, mtr = _batch(1)
    _, mts = _batch(2)
    seen = {}

    def after_g_update(**kwargs):
        seen["g"] = copy.deepcopy(trainer.loss_generator)
        seen["f"] = _adam_step_of_f(trainer, lambda f: FusionLoss()(f(crop), crop, seen["g"](crop).detach()))

    # the event fires between G's update and F's step
    monkeypatch.setattr(trainer.pm.hook, "tdfusion_on_meta_step_end", after_g_update)
    assert trainer.meta_update(crop, mtr, mts) is not None
    assert _close(_params(trainer.fusion_net), seen["f"])
    assert _close(_params(trainer.loss_generator), _params(seen["g"]))


def test_discriminative_fuses_with_gs_weights_and_trains_g_by_the_task_loss():
    trainer = small_trainer(epochs=1, discriminative=True)
    sources = _batch()[1].sources.float()
    w = trainer.loss_generator(sources)
    assert torch.allclose(trainer.fusion_net(sources), (w * sources).sum(1, keepdim=True))
    g0 = _params(trainer.loss_generator)
    trainer.fit()
    assert trainer.meta_step_count == 0 and not _close(_params(trainer.loss_generator), g0)
