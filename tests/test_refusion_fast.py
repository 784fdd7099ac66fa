"""The fast passes of ReFusion and LPN (:mod:`tdfusion_core.nets.refusion_fast`) compute the eager networks' functions.

Float64 comparisons pin the maths (any mistake in the folded attention, the Gram-matrix norms, the strips' halos or
the biases shows up far above 1e-12); the published weights' golden outputs pin the float32 accuracy that
``tdfusion fuse`` relies on by default.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from tdfusion_core.commands.cli import build_cli
from tdfusion_core.common.speed import keep_freed_memory
from tdfusion_core.nets import refusion_fast, training_passes
from tdfusion_core.nets.lpn import LossGenerator
from tdfusion_core.nets.refusion import FusionNet
from tdfusion_core.nets.refusion_fast import (
    FastFusion,
    fast_forward,
    fast_inference,
    precision_error,
)
from tdfusion_core.nets.training_passes import lpn_forward, use_fast_pass
from tdfusion_core.training.checkpoints import load_model_checkpoint, save_model_checkpoint
from tests.conftest import shared_path
from tests.torch_threads import one_torch_thread  # noqa: F401


def perturbed(make: Callable[[], nn.Module], seed: int) -> Any:
    """``make()`` in float64 with weights moved off their initial values (LayerNorm 1/0, temperature 1)."""
    torch.manual_seed(seed)
    net = make().double()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return net


def random_net(num_sources: int = 2, bias: bool = False) -> FusionNet:
    """A small perturbed float64 ReFusion."""
    return perturbed(
        lambda: FusionNet(num_sources=num_sources, dim=8, num_blocks=2, heads=2, bias=bias), num_sources + 10 * bias
    )


@pytest.mark.parametrize(("num_sources", "bias"), [(2, False), (2, True), (3, False)])
@pytest.mark.parametrize("strip_rows", [None, 1, 4, 5])
def test_float64_equals_the_eager_network(num_sources, bias, strip_rows):
    net = random_net(num_sources, bias)
    x = torch.rand(2, num_sources, 13, 17, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected = net(x)
    with torch.inference_mode():
        got = fast_forward(net, x, inplace=True, strip_rows=strip_rows)
    assert got.shape == expected.shape and got.is_contiguous()
    assert (got - expected).abs().max() < 1e-12
    assert (fast_forward(net, x) - expected).abs().max() < 1e-12  # out-of-place (autograd) form


def test_the_input_is_left_untouched_and_batch_items_stay_independent():
    net = random_net()
    x = torch.rand(3, 2, 9, 11, dtype=torch.float64)
    kept = x.clone()
    with torch.inference_mode():
        batched = fast_forward(net, x, inplace=True, strip_rows=4)
        single = torch.cat([fast_forward(net, x[i : i + 1], inplace=True) for i in range(3)])
    assert torch.equal(x, kept)
    assert (batched - single).abs().max() < 1e-12


def test_gradients_of_the_out_of_place_form_equal_eager():
    net = random_net()
    x = torch.rand(1, 2, 10, 12, dtype=torch.float64)
    params = list(net.parameters())
    eager = torch.autograd.grad(net(x).square().sum(), params)
    fast = torch.autograd.grad(fast_forward(net, x).square().sum(), params)
    assert max(float((a - b).abs().max()) for a, b in zip(eager, fast, strict=True)) < 1e-10


@pytest.mark.parametrize("case", json.loads(shared_path("golden", "refusion", "expected.json").read_text())["cases"])
def test_golden_outputs_of_the_published_weights_in_float32(case):
    keep_freed_memory()
    net = load_model_checkpoint(shared_path("weights", "ReFusion_IVIF.pth")).fusion_net
    x = torch.from_numpy(np.load(shared_path("golden", "refusion", case["input"])))[None]
    expected = np.load(shared_path("golden", "refusion", case["fused"]))
    got = FastFusion(net)(x)[0, 0].numpy()
    assert np.abs(got - expected).max() <= 1e-5  # the default path of tdfusion fuse: stated bound 1e-5


@pytest.mark.parametrize(("precision", "tolerance"), [("bf16", 0.05), ("fp16", 0.01)])
def test_low_precision_reports_its_difference_to_fp32(precision, tolerance):
    net = load_model_checkpoint(shared_path("weights", "ReFusion_IVIF.pth")).fusion_net
    x = torch.rand(1, 2, 12, 20, generator=torch.Generator().manual_seed(0))
    fast = FastFusion(net, precision, measure_error=True)
    assert fast.error_vs_fp32 is None
    out = fast(x)
    assert out.dtype == torch.float32 and next(fast.net.parameters()).dtype == fast.dtype
    assert fast.error_vs_fp32 is not None and 0 < fast.error_vs_fp32 < tolerance
    # the two float32 references (fast pass, layers) differ by rounding only
    assert fast.error_vs_fp32 == pytest.approx(precision_error(fast, net, x), abs=1e-6)
    assert next(net.parameters()).dtype == torch.float32  # the caller's network is not cast
    with pytest.raises(ValueError, match="fp32, bf16, fp16"):
        FastFusion(net, "int8")


def test_other_architectures_run_eagerly():
    generator = random_generator()
    assert use_fast_pass(generator) is True and use_fast_pass(generator, enabled=False) is False
    assert generator.forward_pass is None
    other = nn.Conv2d(2, 1, 1)
    assert fast_inference(other) is other
    wrapped = fast_inference(other, "bf16")
    assert wrapped(torch.rand(1, 2, 4, 4)).dtype == torch.float32
    assert isinstance(fast_inference(random_net().float()), FastFusion)


def test_fuse_cli_uses_the_fast_pass_and_reports_the_precision_error(tmp_path):
    torch.manual_seed(0)
    config = {"dim": 8, "num_blocks": 1, "heads": 2}
    ckpt = tmp_path / "small.pt"
    save_model_checkpoint(ckpt, fusion_net=FusionNet(**config), fusion_arch="refusion", fusion_config=config)
    rng = np.random.default_rng(0)
    for folder in ("ir", "vi"):
        (tmp_path / folder).mkdir()
        Image.fromarray(rng.integers(0, 256, (10, 14), dtype=np.uint8)).save(tmp_path / folder / "a.png")
    common = ["fuse", "--ir", str(tmp_path / "ir"), "--vis", str(tmp_path / "vi"), "--checkpoint", str(ckpt)]
    runner = CliRunner()
    outputs = {}
    for name, extra in {"fast": [], "eager": ["--eager"], "bf16": ["--precision", "bf16"]}.items():
        result = runner.invoke(
            build_cli(), [*common, "--out", str(tmp_path / name), "--quiet", "--json", "--threads", "1", *extra]
        )
        assert result.exit_code == 0, result.output
        outputs[name] = json.loads(result.output.strip().splitlines()[-1])
    assert outputs["fast"]["precision"] == "fp32" and outputs["fast"]["precision_error"] is None
    assert outputs["bf16"]["precision"] == "bf16" and 0 < outputs["bf16"]["precision_error"] < 0.05
    fast = np.asarray(Image.open(tmp_path / "fast" / "Gray" / "a.png"), dtype=np.int16)
    eager = np.asarray(Image.open(tmp_path / "eager" / "Gray" / "a.png"), dtype=np.int16)
    assert np.abs(fast - eager).max() <= 1  # 8-bit files of outputs within 1e-5 of each other


# ------------------------------------------------------------------------------ the training pass (use_fast_pass)


def _loss_and_grads(net: FusionNet, params: dict, x: torch.Tensor, probe: torch.Tensor):
    """``Σ probe·F(x)`` through parameter substitution (as the meta step calls F) and its gradients."""
    from torch.func import functional_call

    leaves = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
    xx = x.clone().requires_grad_(True)
    out = functional_call(net, leaves, (xx,))
    grads = torch.autograd.grad((probe * out).sum(), [*leaves.values(), xx])
    return out.detach(), dict(zip([*leaves, "input"], grads))


@pytest.mark.parametrize(("num_sources", "bias"), [(2, False), (2, True), (3, False)])
def test_training_pass_outputs_gradients_and_jvp_equal_the_layers_in_float64(num_sources, bias):
    from torch.func import functional_call, jvp

    net = random_net(num_sources, bias)
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(2, num_sources, 11, 14, dtype=torch.float64, generator=gen)
    probe = torch.randn(2, 1, 11, 14, dtype=torch.float64, generator=gen)
    params = {n: p.detach() for n, p in net.named_parameters()}
    tangents = {n: torch.randn(p.shape, dtype=p.dtype, generator=gen) for n, p in params.items()}

    def jvp_of(module: nn.Module):
        return jvp(lambda p: functional_call(module, p, (x,)), (params,), (tangents,))

    out_e, grads_e = _loss_and_grads(net, params, x, probe)
    primal_e, tangent_e = jvp_of(net)
    assert use_fast_pass(net) is True and net.forward_pass is not None
    out_f, grads_f = _loss_and_grads(net, params, x, probe)
    primal_f, tangent_f = jvp_of(net)

    assert (out_f - out_e).abs().max() < 1e-12
    assert grads_f.keys() == grads_e.keys()
    for name, g in grads_e.items():  # every parameter's gradient and the input's
        assert (grads_f[name] - g).abs().max() < 1e-12 * max(1.0, float(g.abs().max())), name
    assert (primal_f - primal_e).abs().max() < 1e-12
    assert (tangent_f - tangent_e).abs().max() < 1e-12 * max(1.0, float(tangent_e.abs().max()))
    assert tangent_e.abs().max() > 1e-3  # a tangent that says something


def random_generator(num_sources: int = 2, bias: bool = False) -> LossGenerator:
    """A small perturbed float64 LPN."""
    return perturbed(
        lambda: LossGenerator(num_sources=num_sources, dim=8, num_blocks=2, heads=2, bias=bias),
        7 + num_sources + 10 * bias,
    )


@pytest.mark.parametrize(("num_sources", "bias"), [(2, False), (2, True), (3, False)])
def test_lpn_pass_outputs_gradients_jvp_and_second_derivative_equal_the_layers_in_float64(num_sources, bias):
    """The loss generator's pass: its weights, gradients and JVP, and the double backward the meta step takes
    through it (the gradient w.r.t. θG of a function of the weights' input gradient)."""
    from torch.func import functional_call, jvp

    net = random_generator(num_sources, bias)
    gen = torch.Generator().manual_seed(6)
    x = torch.rand(2, num_sources, 10, 13, dtype=torch.float64, generator=gen)
    probe = torch.randn(2, num_sources, 10, 13, dtype=torch.float64, generator=gen)
    params = {n: p.detach() for n, p in net.named_parameters()}
    tangents = {n: torch.randn(p.shape, dtype=p.dtype, generator=gen) for n, p in params.items()}

    def second_order() -> torch.Tensor:
        leaves = [p for p in net.parameters()]
        xx = x.clone().requires_grad_(True)
        (gx,) = torch.autograd.grad((probe * net(xx)).sum(), xx, create_graph=True)
        return torch.cat([g.flatten() for g in torch.autograd.grad(gx.square().sum(), leaves)])

    def measure(module: nn.Module):
        out, grads = _loss_and_grads(module, params, x, probe)
        return out, grads, jvp(lambda p: functional_call(module, p, (x,)), (params,), (tangents,)), second_order()

    out_e, grads_e, (primal_e, tangent_e), second_e = measure(net)
    assert use_fast_pass(net) is True and net.forward_pass is lpn_forward
    out_f, grads_f, (primal_f, tangent_f), second_f = measure(net)

    assert (out_f - out_e).abs().max() < 1e-12 and (primal_f - primal_e).abs().max() < 1e-12
    for name, g in grads_e.items():
        assert (grads_f[name] - g).abs().max() < 1e-12 * max(1.0, float(g.abs().max())), name
    assert (tangent_f - tangent_e).abs().max() < 1e-12 * max(1.0, float(tangent_e.abs().max()))
    assert (second_f - second_e).abs().max() < 1e-11 * max(1.0, float(second_e.abs().max()))
    assert tangent_e.abs().max() > 1e-3 and second_e.abs().max() > 1e-6  # derivatives that say something


def test_a_call_without_derivatives_reuses_buffers_and_computes_the_same():
    """Grad mode off, no forward-mode level and no autocast: ReFusion's pass runs in place; a JVP, even under
    ``no_grad``, and an autocast call still get the out-of-place pass."""
    from torch.func import functional_call, jvp

    net = random_net()
    x = torch.rand(2, 2, 9, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    expected = fast_forward(net, x)
    use_fast_pass(net)
    calls = []
    original = refusion_fast.fast_forward

    def spy(*args, **kwargs):
        calls.append(kwargs.get("inplace", args[2] if len(args) > 2 else False))
        return original(*args, **kwargs)

    params = {n: p.detach() for n, p in net.named_parameters()}
    tangents = {n: torch.ones_like(p) for n, p in params.items()}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training_passes.refusion_fast, "fast_forward", spy)
        with torch.no_grad():
            assert (net(x) - expected).abs().max() < 1e-12
            _, tangent = jvp(lambda p: functional_call(net, p, (x,)), (params,), (tangents,))
        assert net(x).requires_grad
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # in-place products would not autocast
            assert net.float()(x.float()).shape == (2, 1, 9, 12)
        net.double()
    assert calls == [True, False, False, False]
    assert tangent.abs().max() > 1e-3
    generator = random_generator()
    weights = generator(x)
    use_fast_pass(generator)
    with torch.no_grad():
        assert (generator(x) - weights).abs().max() < 1e-12


def test_use_fast_pass_switches_refusion_and_lpn_only_and_can_be_undone():
    net = random_net()
    x = torch.rand(1, 2, 8, 9, dtype=torch.float64)
    use_fast_pass(net)
    assert net.state_dict().keys() == random_net().state_dict().keys()
    assert use_fast_pass(net, enabled=False) is False and net.forward_pass is None
    generator = random_generator()
    assert use_fast_pass(generator) is True and use_fast_pass(generator, enabled=False) is False
    assert generator.forward_pass is None
    other = nn.Conv2d(2, 1, 1)
    assert use_fast_pass(other) is False and not hasattr(other, "forward_pass")
    assert net(x).shape == (1, 1, 8, 9)


@pytest.mark.parametrize("enabled", [True, False])
def test_the_trainer_follows_the_fast_pass_switch_and_keeps_freed_memory_on_the_cpu(enabled):
    from tdfusion_core.training.config import TrainConfig
    from tdfusion_core.training.trainer import MetaTrainer
    from tests.trainer_utils import BlobScenes, SmallGenerator

    config = TrainConfig(task="tiny-seg", task_options={"width": 4}, progress=False, fast_fusion_pass=enabled)
    net = FusionNet(dim=4, num_blocks=1, heads=2)
    trainer = MetaTrainer(config, train_set=BlobScenes(2), fusion_net=net, loss_generator=SmallGenerator())
    assert trainer.fusion_net is net and (net.forward_pass is not None) is enabled
    generator = LossGenerator(dim=4, num_blocks=1, heads=2)
    with pytest.MonkeyPatch.context() as mp:
        applied = []
        mp.setattr("tdfusion_core.training.trainer.keep_freed_memory", lambda: applied.append(True))
        MetaTrainer(
            config,
            train_set=BlobScenes(2),
            fusion_net=FusionNet(dim=4, num_blocks=1, heads=2),
            loss_generator=generator,
        )
    assert (generator.forward_pass is not None) is enabled
    assert applied == [True]  # a CPU run keeps freed memory for reuse (common.speed)
