"""K = 3 sources (infrared, visible, NIR-like): the registered nets, the exact meta-gradient, training, fusion and
evaluation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as nnf

from tdfusion_core.data.sample import Sample
from tdfusion_core.data.synthetic import SyntheticScenes
from tdfusion_core.kernel.losses import FusionLoss
from tdfusion_core.kernel.meta import MetaStep, TaskInput, detached_params, sgd_task_step
from tdfusion_core.plugin import registry
from tdfusion_core.training.checkpoints import load_model_checkpoint
from tdfusion_core.training.config import TrainConfig
from tdfusion_core.training.trainer import MetaTrainer
from tests.test_meta import _outer_objective
from tests.torch_threads import one_torch_thread  # noqa: F401
from tests.trainer_utils import small_settings

SMALL = {"dim": 4, "num_blocks": 1, "heads": 1}


class ThreeSourceScenes(torch.utils.data.Dataset):
    """:class:`SyntheticScenes` with a third source: a NIR-like copy of the visible luminance, blurred (3x3 box
    filter) and noisy, grayscale (neutral chroma)."""

    def __init__(self, n: int, size: tuple[int, int] = (32, 48), split: str = "train", dtype=torch.float32) -> None:
        self.base = SyntheticScenes(n, size=size, split=split, target="mask")
        self.num_classes = self.base.num_classes
        self.target_kind = self.base.target_kind
        self.dtype = dtype

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> Sample:
        s = self.base[i]
        vis = s.sources[1][None, None]
        blurred = nnf.avg_pool2d(vis, 3, stride=1, padding=1, count_include_pad=False)[0, 0]
        noise = torch.randn(blurred.shape, generator=torch.Generator().manual_seed(i)) * 0.03
        nir = (blurred + noise).clamp(0, 1)
        sources = torch.cat([s.sources, nir[None]]).to(self.dtype)
        chroma = torch.cat([s.chroma, torch.full((1, *s.chroma.shape[1:]), 0.5)]).to(self.dtype)
        return Sample(sources, chroma, s.target, s.name)


def test_registered_nets_take_three_sources():
    torch.manual_seed(0)
    fusion = registry.get_fusion_net("refusion", num_sources=3, **SMALL)
    generator = registry.get_loss_generator("lpn", num_sources=3, **SMALL)
    x = torch.rand(2, 3, 16, 20)
    fused, weights = fusion(x), generator(x)
    assert fused.shape == (2, 1, 16, 20) and bool(((fused > 0) & (fused < 1)).all())
    assert weights.shape == (2, 3, 16, 20)
    assert torch.allclose(weights.sum(1), torch.ones(2, 16, 20), atol=1e-6) and bool((weights >= 0).all())
    # the third source matters to both networks
    y = x.clone()
    y[:, 2] = 1 - y[:, 2]
    assert not torch.allclose(fusion(y), fused) and not torch.allclose(generator(y), weights)
    with pytest.raises((ValueError, RuntimeError)):
        fusion(torch.rand(1, 2, 16, 20))


def _three_source_trainer(out_dir=None, dtype=torch.float32, **overrides) -> MetaTrainer:
    settings = small_settings(
        fusion_options=SMALL,
        loss_generator_options=SMALL,
        epochs=1,
        fusion_steps=2,
        task_size=(32, 48),
        log_images=out_dir is not None,
    )
    settings.update(overrides)
    torch.manual_seed(0)
    return MetaTrainer(TrainConfig(**settings), train_set=ThreeSourceScenes(6, dtype=dtype), out_dir=out_dir)


def test_meta_gradient_modes_agree_with_three_sources():
    """float64: the jvp meta-gradient of G equals the double-backward one for K = 3 (refusion + lpn)."""
    trainer = _three_source_trainer(dtype=torch.float64)
    for module in (trainer.fusion_net, trainer.loss_generator, trainer.task.network):
        module.double()
    gen = torch.Generator().manual_seed(0)
    crop, mtr = trainer.batcher.whole([trainer.train_set[0]], gen)
    _, mts = trainer.batcher.whole([trainer.train_set[1]], gen)
    assert crop.shape == (2, 3, 16, 16)  # one sample and its Switch, three sources
    grads = {}
    for mode in ("jvp", "double-backward"):
        step = MetaStep(trainer.fusion_net, trainer.loss_generator, trainer.task, trainer.fusion_loss, mode)
        grads[mode] = step.compute(crop, mtr, mts, 1e-2, sgd_task_step(1e-2)).grad_g
    flat = {m: torch.cat([g.reshape(-1) for g in grads[m].values()]) for m in grads}
    scale = float(flat["double-backward"].abs().max())
    assert scale > 0
    assert float((flat["jvp"] - flat["double-backward"]).abs().max()) < 1e-9 * scale


def test_train_fuse_and_evaluate_with_three_sources(tmp_path):
    trainer = _three_source_trainer(tmp_path)
    assert trainer.num_sources == 3
    g0 = {k: v.clone() for k, v in trainer.loss_generator.state_dict().items()}
    f0 = {k: v.clone() for k, v in trainer.fusion_net.state_dict().items()}
    history = trainer.fit()
    assert trainer.meta_step_count == 2 and trainer.fusion_step_count == 2
    assert any(not torch.equal(g0[k], v) for k, v in trainer.loss_generator.state_dict().items())
    assert any(not torch.equal(f0[k], v) for k, v in trainer.fusion_net.state_dict().items())
    weights = [history[-1][f"weight/source{k}"] for k in range(3)]
    assert abs(sum(weights) - 1) < 1e-5 and min(weights) > 0
    assert (tmp_path / "images" / "epoch_0001.png").is_file()

    # fusion and evaluation on unseen scenes
    val = ThreeSourceScenes(3, split="val")
    sources = torch.stack([val[i].sources for i in range(2)])
    fused, w = trainer.fuse(sources)
    assert fused.shape == (2, 1, 32, 48) and w.shape == (2, 3, 32, 48)
    metrics = trainer.evaluate(val)
    assert 0 <= metrics["mIoU"] <= 1

    # the exported model takes three sources and fuses as the trainer does
    ckpt = load_model_checkpoint(tmp_path / "model.pt")
    assert ckpt.num_sources == 3 and ckpt.loss_generator is not None
    with torch.no_grad():
        assert torch.allclose(ckpt.fusion_net(sources).clamp(0, 1), fused, atol=1e-6)
        assert torch.allclose(ckpt.loss_generator(sources), w, atol=1e-6)


def test_meta_gradient_with_three_sources_matches_central_finite_differences():
    """float64, K = 3 (refusion + lpn): the jvp meta-gradient of G along random directions equals central finite
    differences of the outer objective θG -> Lt(T'(F'(θG))) computed without MetaStep (T' held fixed)."""
    torch.manual_seed(0)
    fusion = registry.get_fusion_net("refusion", num_sources=3, **SMALL).double()
    generator = registry.get_loss_generator("lpn", num_sources=3, **SMALL).double()
    data = ThreeSourceScenes(4, size=(16, 20), dtype=torch.float64)
    task = registry.get_task("tiny-seg", num_classes=data.num_classes, width=4)
    task.network.double()

    def batch(indices):
        samples = [data[i] for i in indices]
        return TaskInput(
            torch.stack([s.sources for s in samples]),
            torch.stack([s.chroma for s in samples]),
            torch.stack([s.target for s in samples]),
        )

    mtr, mts = batch([0, 1]), batch([2, 3])
    crop = mtr.sources[..., 2:14, 3:15]
    assert crop.shape == (2, 3, 12, 12)
    lr = 0.5
    step = MetaStep(fusion, generator, task, FusionLoss(intensity="reference", alpha=1.0), "jvp")
    result = step.compute(crop, mtr, mts, lr, sgd_task_step(0.1))
    theta_g = detached_params(generator)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        d = {n: torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in theta_g.items()}
        h = 1e-5
        plus = _outer_objective(step, crop, mts, {n: p + h * d[n] for n, p in theta_g.items()}, result.task_params, lr)
        minus = _outer_objective(step, crop, mts, {n: p - h * d[n] for n, p in theta_g.items()}, result.task_params, lr)
        fd = float(plus - minus) / (2 * h)
        analytic = float(sum((result.grad_g[n] * d[n]).sum() for n in d))
        assert abs(fd) > 0
        assert analytic == pytest.approx(fd, rel=1e-5)
