"""The trainer's meta step against a float64 port of the released TDFusion meta step (HaowenBai/TDFusion train.py).

The port below is written here from the released algorithm, in plain torch, independently of ``tdfusion_core``'s
meta step, loss and task code:

1. inner update of F: ``Lf`` of F's output on the meta-train crop with G's weights, its gradient taken with
   ``create_graph=True`` and ``θF' = θF − η·∇θF Lf`` (``inner_update``; η = F's learning rate);
2. T takes one real ``optimizer.step()`` of its Adam on the task loss of the PRE-update F's output on the
   meta-train batch, detached (``Fusion_model(...)`` without ``meta=True``), after T's state dict was saved;
3. outer: the task loss of the stepped T on F'(x_mts) is back-propagated to G (``optimizer3.zero_grad()`` first);
   G takes ``θG −= lr·g/max|g|`` (``outer_update``); T's weights and buffers are reloaded, its Adam state is not.

The task network sees the one-channel fused luminance; the segmentation loss is cross-entropy with the logits
upsampled bilinearly (``align_corners=True``) to the mask size (``CE_Loss``). The project side is a
:class:`MetaTrainer` built with its defaults (``profile: released``) on the same tiny modules, driven through
``MetaTrainer.meta_update``.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as nnf
from torch.func import functional_call

from tdfusion_core.kernel.meta import MetaStepResult, TaskInput
from tdfusion_core.nets.lpn import LossGenerator
from tdfusion_core.nets.refusion import FusionNet
from tdfusion_core.nets.training_passes import use_fast_pass
from tdfusion_core.plugin.registry import get_task
from tdfusion_core.training.config import TrainConfig
from tdfusion_core.training.trainer import MetaTrainer
from tests.trainer_utils import BlobScenes

LR_F, LR_T, LR_G = 0.3, 0.05, 0.01
STEPS = 3


# The port's own small F and G (not tests/trainer_utils'): the port stays independent of the code it checks.
class TinyFusion(nn.Module):
    """Two convolutions and a sigmoid output, like ReFusion's last layer."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 5, 3, padding=1)
        self.b = nn.Conv2d(5, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.b(torch.tanh(self.a(x))))


class TinyGenerator(nn.Module):
    """Per-pixel softmax weights over the two sources, like LPN's output."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.b(torch.tanh(self.a(x))), dim=1)


# ---------------------------------------------------------------------- the port (released utils.py maths)
def _sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype)[None, None]
    ky = torch.tensor([[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]], dtype=x.dtype)[None, None]
    return nnf.conv2d(x, kx, padding=1), nnf.conv2d(x, ky, padding=1)


def port_fusion_loss_released(fused: torch.Tensor, sources: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``Fusionloss_int`` (squared weights) + ``Fusionloss_grad`` (signed Sobel of the larger magnitude)."""
    a, b = sources[:, :1], sources[:, 1:]
    lint = nnf.mse_loss(w[:, :1] * (a - fused), torch.zeros_like(fused)) + nnf.mse_loss(
        w[:, 1:] * (b - fused), torch.zeros_like(fused)
    )
    (fx, fy), (ax, ay), (bx, by) = _sobel(fused), _sobel(a), _sobel(b)
    mx = (ax.abs() >= bx.abs()) * ax + (ax.abs() < bx.abs()) * bx
    my = (ay.abs() >= by.abs()) * ay + (ay.abs() < by.abs()) * by
    return lint + nnf.l1_loss(fx, mx) + nnf.l1_loss(fy, my)


def port_fusion_loss_paper(fused: torch.Tensor, sources: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Eq. 2 ``mean Σ_k w_k (If − I_k)²`` + Eq. 3 ``mean | |∇If| − max_k |∇I_k| |`` with ``|∇I| = |∂x I| + |∂y I|``."""
    lint = (w * (fused - sources) ** 2).sum(dim=1).mean()
    mags = [sum(d.abs() for d in _sobel(sources[:, k : k + 1])) for k in range(sources.shape[1])]
    return lint + (sum(d.abs() for d in _sobel(fused)) - torch.maximum(*mags)).abs().mean()


def port_ce(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``CE_Loss``: logits upsampled bilinearly (align_corners=True) to the mask size, then cross-entropy."""
    if logits.shape[-2:] != mask.shape[-2:]:
        logits = nnf.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=True)
    return nnf.cross_entropy(logits, mask)


class ReleasedPort:
    """F, G, T and T's Adam, stepped as the released ``train.py`` meta loop does (float64)."""

    def __init__(self, fusion: nn.Module, generator: nn.Module, task_net: nn.Module) -> None:
        self.F, self.G, self.T = fusion, generator, task_net
        self.opt_t = torch.optim.Adam(self.T.parameters(), lr=LR_T, weight_decay=0)

    def step(self, crop: torch.Tensor, mtr: TaskInput, mts: TaskInput) -> dict[str, torch.Tensor]:
        F, G, T = self.F, self.G, self.T
        saved_t = copy.deepcopy(T.state_dict())  # torch.save(Task_model.state_dict(), ...)
        # inner update of F (create_graph), G's weights in the graph
        lf = port_fusion_loss_released(F(crop), crop, G(crop))
        names, params = zip(*F.named_parameters())
        grads = torch.autograd.grad(lf, params, create_graph=True)
        theta_f1 = {n: p - LR_F * g for n, p, g in zip(names, params, grads)}
        # T: one real Adam step on the pre-update F's detached output
        self.opt_t.zero_grad()
        fused = F(mtr.sources).detach()
        port_ce(T(fused), mtr.targets).backward()
        self.opt_t.step()
        # outer loss through F' and the stepped T, back to G
        G.zero_grad()
        lt = port_ce(T(functional_call(F, theta_f1, (mts.sources,))), mts.targets)
        lt.backward()
        grad_g = {n: p.grad.detach().clone() for n, p in G.named_parameters()}
        with torch.no_grad():  # outer_update: θG −= lr·g/max|g|
            top = max(float(g.abs().max()) for g in grad_g.values())
            for n, p in G.named_parameters():
                p.add_(-LR_G * grad_g[n] / top)
        T.load_state_dict(saved_t)
        F.zero_grad()
        self.opt_t.zero_grad()
        return grad_g


class PaperPort:
    """The printed Eqs. 2-7 (float64): SGD T' on the pre-update F (Eq. 5), plain gradient step of G (Eq. 6)."""

    def __init__(self, fusion: nn.Module, generator: nn.Module, task_net: nn.Module) -> None:
        self.F, self.G, self.T = fusion, generator, task_net
        self.opt_t = torch.optim.SGD(self.T.parameters(), lr=LR_T)  # never stepped (compared: both states empty)

    def step(self, crop: torch.Tensor, mtr: TaskInput, mts: TaskInput) -> dict[str, torch.Tensor]:
        F, G, T = self.F, self.G, self.T
        buffers = copy.deepcopy({n: b for n, b in T.named_buffers()})
        lf = port_fusion_loss_paper(F(crop), crop, G(crop))  # Eqs. 2-3
        names, params = zip(*F.named_parameters())
        grads = torch.autograd.grad(lf, params, create_graph=True)
        theta_f1 = {n: p - LR_F * g for n, p, g in zip(names, params, grads)}  # Eq. 4
        t_names, t_params = zip(*T.named_parameters())
        lt_inner = port_ce(T(F(mtr.sources).detach()), mtr.targets)
        t_grads = torch.autograd.grad(lt_inner, t_params)
        theta_t1 = {n: (p - LR_T * g).detach() for n, p, g in zip(t_names, t_params, t_grads)}  # Eq. 5
        fused = functional_call(F, theta_f1, (mts.sources,))
        lt = port_ce(functional_call(T, {**theta_t1, **buffers}, (fused,)), mts.targets)
        g_names, g_params = zip(*G.named_parameters())
        grad_g = dict(zip(g_names, (g.detach() for g in torch.autograd.grad(lt, g_params))))  # Eqs. 6-7
        with torch.no_grad():
            for n, p in G.named_parameters():
                p.add_(-LR_G * grad_g[n])  # Eq. 6: a plain gradient step
            for n, b in T.named_buffers():
                b.copy_(buffers[n])
        return grad_g


# ---------------------------------------------------------------------- the project side
class _Recorder:
    """Stands in for the trainer's meta step and keeps each result (G's gradient before the update)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.results: list[MetaStepResult] = []

    def compute(self, *args: Any) -> MetaStepResult:
        result = self.inner.compute(*args)
        self.results.append(result)
        return result

    def __getattr__(self, name: str) -> Any:  # the modules (task, ...) of the step it stands in for
        return getattr(self.inner, name)


def _batches(step: int, classes: int = 3) -> tuple[torch.Tensor, TaskInput, TaskInput]:
    g = torch.Generator().manual_seed(100 + step)

    def task_batch() -> TaskInput:
        sources = torch.rand(2, 2, 16, 16, generator=g, dtype=torch.float64)
        return TaskInput(sources, torch.full((2, 2, 2, 16, 16), 0.5, dtype=torch.float64), _mask(g, classes))

    crop = torch.rand(2, 2, 12, 12, generator=g, dtype=torch.float64)
    return crop, task_batch(), task_batch()


def _mask(g: torch.Generator, classes: int) -> torch.Tensor:
    return torch.randint(0, classes, (2, 16, 16), generator=g)


def _trainer(nets: str = "tiny", **overrides: Any) -> MetaTrainer:
    """A trainer on tiny stand-in networks, or (``nets="restormer"``) on small ReFusion and LPN, which the trainer
    runs through their fast passes (and ReFusion's linearized pass in the ``jvp`` mode)."""
    torch.manual_seed(0)
    task = get_task("tiny-seg", num_classes=3, width=4)
    task.network.double()
    settings: dict[str, Any] = dict(
        epochs=1,
        meta_steps=STEPS,
        lr_fusion=LR_F,
        lr_task=LR_T,
        lr_generator=LR_G,
        crop_size=12,
        task_size=(16, 16),
        progress=False,
        log_images=False,
    )
    settings.update(overrides)
    return MetaTrainer(
        TrainConfig(**settings),
        task=task,
        train_set=BlobScenes(4),
        fusion_net=(TinyFusion() if nets == "tiny" else FusionNet(dim=4, num_blocks=1, heads=2)).double(),
        loss_generator=(TinyGenerator() if nets == "tiny" else LossGenerator(dim=4, num_blocks=1, heads=2)).double(),
    )


def _rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    fa = torch.cat([a[n].detach().reshape(-1) for n in sorted(b)])
    fb = torch.cat([b[n].detach().reshape(-1) for n in sorted(b)])
    return float((fa - fb).norm() / fb.norm())


def _adam_state(opt: torch.optim.Optimizer, net: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    return {
        n: {k: torch.as_tensor(v).clone() for k, v in opt.state[p].items()}
        for n, p in net.named_parameters()
        if p in opt.state
    }


def _run_both(trainer: MetaTrainer, port: Any) -> list[dict[str, Any]]:
    recorder = _Recorder(trainer.meta_phase_step.meta_step)
    trainer.meta_phase_step.meta_step = recorder  # type: ignore[assignment]
    t0 = copy.deepcopy(trainer.task.network.state_dict())
    out = []
    for step in range(STEPS):
        crop, mtr, mts = _batches(step)
        assert trainer.meta_update(crop, mtr, mts) is not None
        grad_port = port.step(crop, mtr, mts)
        out.append(
            {
                "grad_rel": _rel(recorder.results[-1].grad_g, grad_port),
                "g_rel": _rel(dict(trainer.loss_generator.named_parameters()), dict(port.G.named_parameters())),
                "state": (_adam_state(trainer.opt_task, trainer.task.network), _adam_state(port.opt_t, port.T)),
                "t_restored": all(torch.equal(v, t0[k]) for k, v in trainer.task.network.state_dict().items()),
            }
        )
    return out


def _port_of(trainer: MetaTrainer, cls: type = ReleasedPort) -> Any:
    """The port on copies of the trainer's networks, running their layers' own forwards (no fast pass)."""
    fusion, generator = copy.deepcopy(trainer.fusion_net), copy.deepcopy(trainer.loss_generator)
    use_fast_pass(fusion, enabled=False)
    use_fast_pass(generator, enabled=False)
    return cls(fusion, generator, copy.deepcopy(trainer.task.network))


@pytest.mark.parametrize(("mode", "nets"), [("jvp", "tiny"), ("double-backward", "tiny"), ("jvp", "restormer")])
def test_default_meta_step_is_the_released_one_over_three_steps(mode, nets):
    trainer = _trainer(nets, meta_mode=mode)
    assert trainer.config.profile == "released" and trainer.task.input_kind == "luminance"
    if nets == "restormer":  # the trainer's F and G run the fast passes, the port's the layers
        assert trainer.fusion_net.linearized_pass is not None and trainer.loss_generator.forward_pass is not None
    port = _port_of(trainer)
    for step, r in enumerate(_run_both(trainer, port)):
        assert r["grad_rel"] < 1e-10, f"step {step + 1}: G's gradient differs by {r['grad_rel']:.3g} (relative)"
        assert r["g_rel"] < 1e-10, step
        assert r["t_restored"], "T's weights and buffers must be restored after the meta step"
        ours, theirs = r["state"]
        for name, state in theirs.items():
            assert int(ours[name]["step"]) == int(state["step"]) == step + 1, name
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.allclose(ours[name][key], state[key], rtol=1e-10, atol=1e-20), (step, name, key)


def test_paper_profile_is_the_printed_equations_over_three_steps():
    trainer = _trainer(profile="paper")
    cfg = trainer.config
    assert (cfg.intensity, cfg.gradient_form, cfg.task_step, cfg.generator_update) == ("paper", "paper", "sgd", "sgd")
    assert TrainConfig(profile="paper").epochs == 50 and TrainConfig().epochs == 40
    port = _port_of(trainer, PaperPort)
    for step, r in enumerate(_run_both(trainer, port)):
        assert r["grad_rel"] < 1e-10, f"step {step + 1}: G's gradient differs by {r['grad_rel']:.3g} (relative)"
        assert r["g_rel"] < 1e-10, step
        assert r["t_restored"]
        assert not trainer.opt_task.state  # the SGD T' rule leaves T's optimizer alone


def test_profile_fills_only_what_is_not_given(tmp_path):
    config = TrainConfig(profile="paper", epochs=3, task_step="adam")
    assert (config.epochs, config.task_step, config.intensity, config.generator_update) == (3, "adam", "paper", "sgd")
    config.to_yaml(tmp_path / "run.yaml")
    assert TrainConfig.from_yaml(tmp_path / "run.yaml") == config
    (tmp_path / "short.yaml").write_text("profile: paper\nintensity: reference\n")
    short = TrainConfig.from_yaml(tmp_path / "short.yaml")
    assert (short.epochs, short.intensity, short.gradient_form) == (50, "reference", "paper")
    with pytest.raises(ValueError, match="profile"):
        TrainConfig(profile="as-released")
    with pytest.raises(ValueError, match="task_step"):
        TrainConfig(task_step="adam-live")


def test_segmentation_loss_is_the_released_full_resolution_ce():
    """tiny-seg's default loss is CE_Loss: masks at the image's resolution, logits upsampled (align_corners=True)."""
    trainer = MetaTrainer(
        TrainConfig(task_options={"width": 4}, task_size=(12, 16), crop_size=8, progress=False, log_images=False),
        train_set=BlobScenes(4),  # 24x32 images and masks
        fusion_net=TinyFusion(),
        loss_generator=TinyGenerator(),
    )
    samples = [trainer.train_set[i] for i in range(2)]
    _, batch = trainer.batcher.whole(samples, torch.Generator().manual_seed(0))
    assert batch.sources.shape[-2:] == (12, 16) and batch.targets.shape == (4, 24, 32)  # with the Switch
    assert torch.equal(batch.targets[:2], torch.stack([s.target for s in samples]))
    task = trainer.task
    images = torch.rand(4, 1, 12, 16)
    expected = port_ce(task.network(images), batch.targets)
    assert torch.allclose(task.compute_loss(task.network, images, batch.targets), expected, rtol=1e-6)
    # the downsampled form stays an option: masks resized (nearest) to the task size
    coarse = get_task("tiny-seg", num_classes=3, width=4, loss_resolution="task")
    assert not coarse.full_resolution_targets and get_task("tiny-seg").full_resolution_targets
    assert coarse.resize_targets(samples[0].target, (24, 32), (12, 16)).shape == (12, 16)
    with pytest.raises(ValueError, match="loss_resolution"):
        get_task("tiny-seg", loss_resolution="half")


def test_full_resolution_masks_of_different_sizes_are_brought_to_one_size():
    trainer = _trainer()
    small, large = torch.zeros(8, 8, dtype=torch.long), torch.ones(16, 24, dtype=torch.long)
    small[:4] = 2
    out = trainer.batcher.common_resolution([small, large])
    assert [tuple(t.shape) for t in out] == [(16, 24), (16, 24)]
    assert int((out[0][:8] == 2).all()) and int((out[0][8:] == 0).all())  # still covers its whole image


def test_every_dataset_preset_feeds_the_task_the_luminance():
    from tdfusion_core.data.presets import PRESETS

    assert PRESETS and all(p.input_kind == "luminance" for p in PRESETS.values())

    class PresetLike(BlobScenes):
        input_kind = "rgb"  # as a preset's dataset carries it

    def build(**task_options):
        config = TrainConfig(task_options={"width": 4, **task_options}, progress=False, log_images=False)
        return MetaTrainer(config, train_set=PresetLike(2), fusion_net=TinyFusion(), loss_generator=TinyGenerator())

    assert build().task.input_kind == "rgb"  # the dataset's kind reaches a task that takes the option
    assert build(input_kind="luminance").task.input_kind == "luminance"  # the run's own option wins


class _BufferedGenerator(TinyGenerator):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.b(self.norm(torch.tanh(self.a(x)))), dim=1)


def test_g_buffers_survive_the_meta_step_and_g_is_in_eval_mode_in_the_fusion_phase():
    trainer = _trainer(meta_mode="jvp")
    trainer.loss_generator = _BufferedGenerator().double()
    trainer.meta_phase_step.meta_step.loss_generator = trainer.loss_generator
    trainer.opt_generator = torch.optim.Adam(trainer.loss_generator.parameters(), lr=LR_G)
    before = copy.deepcopy(dict(trainer.loss_generator.named_buffers()))
    crop, mtr, mts = _batches(0)
    trainer.meta_phase_step.meta_step.compute(crop, mtr, mts, LR_F, trainer.meta_phase_step.task_rule())
    assert all(torch.equal(b, before[n]) for n, b in trainer.loss_generator.named_buffers())
    config = TrainConfig(task_options={"width": 4}, fusion_steps=1, progress=False, log_images=False)
    trainer = MetaTrainer(config, train_set=BlobScenes(2), fusion_net=TinyFusion(), loss_generator=_BufferedGenerator())
    modes = []
    trainer.loss_generator.register_forward_hook(lambda m, i, o: modes.append(m.training))
    trainer.fusion_phase(0)
    assert modes and not any(modes)  # Loss_model.eval() in the released fusion phase


class _DropoutFusion(TinyFusion):
    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout2d(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.b(self.drop(torch.tanh(self.a(x)))))


def test_jvp_mode_refuses_a_fusion_network_with_active_dropout():
    trainer = _trainer(meta_mode="jvp")
    trainer.meta_phase_step.meta_step.fusion_net = _DropoutFusion().double()
    crop, mtr, mts = _batches(0)
    with pytest.raises(ValueError, match="meta_mode: double-backward"):
        trainer.meta_phase_step.meta_step.compute(crop, mtr, mts, LR_F, trainer.meta_phase_step.task_rule())
    trainer.meta_phase_step.meta_step.fusion_net.eval()  # dropout off: accepted
    assert trainer.meta_phase_step.meta_step.compute(crop, mtr, mts, LR_F, trainer.meta_phase_step.task_rule()).finite
    trainer.meta_phase_step.meta_step.fusion_net.train()
    trainer.meta_phase_step.meta_step.mode = "double-backward"  # one pass differentiated twice: exact, accepted
    assert trainer.meta_phase_step.meta_step.compute(crop, mtr, mts, LR_F, trainer.meta_phase_step.task_rule()).finite
