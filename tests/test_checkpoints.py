"""Checkpoints: our format round trip, atomic writes, safe loading, published state dicts, wrong architectures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tdfusion_core.nets.lpn import LossGenerator
from tdfusion_core.nets.refusion import FusionNet
from tdfusion_core.plugin.registry import RegistryError
from tdfusion_core.training.checkpoints import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    convert_reference_state_dict,
    load_model_checkpoint,
    save_model_checkpoint,
)
from tests.conftest import shared_path
from tests.torch_threads import one_torch_thread  # noqa: F401

SMALL = {"dim": 8, "num_blocks": 1, "heads": 2}


def nets(num_sources: int = 2) -> tuple[FusionNet, LossGenerator]:
    torch.manual_seed(0)
    return FusionNet(num_sources, **SMALL), LossGenerator(num_sources, **SMALL)


def reference_style(module: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """A state dict laid out as the reference writes it: each conv weight also as ``X.conv.weight``."""
    state = {}
    for name, tensor in module.state_dict().items():
        state[prefix + name] = tensor.clone()
        owner = name.rsplit(".", 1)[0]
        if isinstance(module.get_submodule(owner), nn.Conv2d):
            state[f"{prefix}{owner}.conv.weight"] = tensor.clone()
    return state


def test_round_trip_of_both_networks_and_metadata(tmp_path):
    fusion, lossgen = nets(3)
    path = tmp_path / "ckpt" / "model.pt"
    save_model_checkpoint(
        path,
        fusion_net=fusion,
        fusion_arch="refusion",
        fusion_config=SMALL,
        loss_generator=lossgen,
        lossgen_arch="lpn",
        lossgen_config=SMALL,
        num_sources=3,
        extra={"epoch": 4, "dataset": "MSRS", "metrics": {"miou": 0.5}, "ema": torch.ones(2)},
    )
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary file left behind
    raw = torch.load(path, weights_only=True)  # loads with no code executed
    assert raw["format"] == FORMAT and raw["version"] == FORMAT_VERSION and raw["num_sources"] == 3
    assert raw["fusion"]["arch"] == "refusion" and raw["loss_generator"]["arch"] == "lpn"

    ckpt = load_model_checkpoint(path)
    assert (ckpt.fusion_arch, ckpt.lossgen_arch, ckpt.num_sources, ckpt.version) == ("refusion", "lpn", 3, 1)
    assert ckpt.fusion_config == SMALL and ckpt.lossgen_config == SMALL
    assert ckpt.extra["epoch"] == 4 and ckpt.extra["metrics"] == {"miou": 0.5}
    assert torch.equal(ckpt.extra["ema"], torch.ones(2))
    assert ckpt.source_format == "tdfusion"
    x = torch.rand(1, 3, 8, 12)
    with torch.no_grad():
        assert torch.equal(ckpt.fusion_net(x), fusion.eval()(x))
        assert ckpt.loss_generator is not None
        assert torch.equal(ckpt.loss_generator(x), lossgen.eval()(x))
    assert not ckpt.fusion_net.training


def test_fusion_only_checkpoint(tmp_path):
    fusion, _ = nets()
    save_model_checkpoint(tmp_path / "f.pt", fusion_net=fusion, fusion_arch="refusion", fusion_config=SMALL)
    ckpt = load_model_checkpoint(tmp_path / "f.pt")
    assert ckpt.loss_generator is None and ckpt.lossgen_arch is None and ckpt.extra == {}


def test_wrapped_modules_are_saved_as_the_plain_module(tmp_path):
    fusion, lossgen = nets()
    save_model_checkpoint(
        tmp_path / "w.pt",
        fusion_net=nn.DataParallel(fusion),
        fusion_arch="refusion",
        fusion_config=SMALL,
        loss_generator=torch.compile(lossgen),
        lossgen_arch="lpn",
        lossgen_config=SMALL,
    )
    raw = torch.load(tmp_path / "w.pt", weights_only=True)
    assert set(raw["fusion"]["state_dict"]) == set(fusion.state_dict())
    assert set(raw["loss_generator"]["state_dict"]) == set(lossgen.state_dict())


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    fusion, _ = nets()
    path = tmp_path / "m.pt"
    save_model_checkpoint(path, fusion_net=fusion, fusion_arch="refusion", fusion_config=SMALL, extra={"n": 1})

    def broken_save(obj, fh):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_model_checkpoint(path, fusion_net=fusion, fusion_arch="refusion", fusion_config=SMALL, extra={"n": 2})
    monkeypatch.undo()
    assert load_model_checkpoint(path).extra == {"n": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_save_checks_the_declared_architecture(tmp_path):
    fusion, _ = nets()
    with pytest.raises(CheckpointError, match="shape mismatches"):
        save_model_checkpoint(tmp_path / "x.pt", fusion_net=fusion, fusion_arch="refusion", fusion_config={})
    with pytest.raises(RegistryError, match="refusion"):
        save_model_checkpoint(tmp_path / "x.pt", fusion_net=fusion, fusion_arch="nope", fusion_config=SMALL)
    with pytest.raises(CheckpointError, match="object"):
        save_model_checkpoint(
            tmp_path / "x.pt", fusion_net=fusion, fusion_arch="refusion", fusion_config={**SMALL, "f": object()}
        )
    with pytest.raises(CheckpointError, match="takes 2 sources"):
        save_model_checkpoint(
            tmp_path / "x.pt", fusion_net=fusion, fusion_arch="refusion", fusion_config=SMALL, num_sources=3
        )
    assert not (tmp_path / "x.pt").exists()


def test_published_refusion_weights_load_with_inferred_config():
    path = shared_path("weights", "ReFusion_IVIF.pth")
    ckpt = load_model_checkpoint(path)
    assert ckpt.source_format == "reference" and ckpt.version == 0 and ckpt.fusion_arch == "refusion"
    assert ckpt.num_sources == 2 and ckpt.loss_generator is None
    assert ckpt.fusion_config == {"dim": 16, "num_blocks": 2, "heads": 8, "ffn_expansion_factor": 2, "bias": False}
    raw = torch.load(path, map_location="cpu", weights_only=True)
    ours = ckpt.fusion_net.state_dict()
    assert torch.equal(ours["FM.project_E.weight"], raw["FM.project_E.conv.weight"])
    assert torch.equal(ours["encoder2.1.attn.temperature"], raw["encoder2.1.attn.temperature"])


def test_reference_layout_with_dataparallel_prefix_and_both_networks(tmp_path):
    fusion, lossgen = nets()
    bundle = {"Fusion_model": reference_style(fusion), "Loss_model": reference_style(lossgen, prefix="module.")}
    assert "module.out3.conv.weight" in bundle["Loss_model"]
    torch.save(bundle, tmp_path / "bundle.pth")
    ckpt = load_model_checkpoint(tmp_path / "bundle.pth")
    assert ckpt.fusion_config == {**SMALL, "ffn_expansion_factor": 2, "bias": False}
    assert ckpt.lossgen_arch == "lpn" and ckpt.lossgen_config is not None and ckpt.lossgen_config["joint_heads"] == 2
    x = torch.rand(1, 2, 6, 9)
    with torch.no_grad():
        assert torch.equal(ckpt.fusion_net(x), fusion.eval()(x))
        assert ckpt.loss_generator is not None
        assert torch.equal(ckpt.loss_generator(x), lossgen.eval()(x))


def test_conversion_keeps_the_conv_copy_and_drops_the_twin():
    state = {"a.weight": torch.zeros(1), "a.conv.weight": torch.ones(1), "b.body.weight": torch.ones(2)}
    assert convert_reference_state_dict(state) == {
        "a.weight": state["a.conv.weight"],
        "b.body.weight": state["b.body.weight"],
    }


def test_wrong_architecture_names_missing_and_unexpected_keys(tmp_path):
    state = convert_reference_state_dict(
        torch.load(shared_path("weights", "ReFusion_IVIF.pth"), map_location="cpu", weights_only=True)
    )
    del state["FM.project_E.weight"]
    state["head.extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "edited.pth")
    with pytest.raises(CheckpointError) as info:
        load_model_checkpoint(tmp_path / "edited.pth")
    message = str(info.value)
    assert "missing keys (1): FM.project_E.weight" in message
    assert "unexpected keys (1): head.extra.weight" in message

    torch.save(nn.Sequential(nn.Conv2d(2, 4, 3), nn.Conv2d(4, 1, 3)).state_dict(), tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"(?s)missing keys.*project_in_1\.weight.*unexpected keys.*0\.weight"):
        load_model_checkpoint(tmp_path / "other.pth")


def test_our_format_with_weights_of_another_configuration(tmp_path):
    fusion, _ = nets()
    payload = {
        "format": FORMAT,
        "version": 1,
        "num_sources": 2,
        "fusion": {
            "arch": "refusion",
            "config": {"dim": 16, "num_blocks": 1, "heads": 2},
            "state_dict": fusion.state_dict(),
        },
        "loss_generator": None,
        "extra": {},
    }
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(
        CheckpointError, match=r"(?s)shape mismatches.*project_in_1\.weight: \(8, 1, 3, 3\) in the checkpoint"
    ):
        load_model_checkpoint(tmp_path / "bad.pt")
    payload["fusion"]["arch"] = "not-registered"
    torch.save(payload, tmp_path / "unknown.pt")
    with pytest.raises(RegistryError, match="not-registered"):
        load_model_checkpoint(tmp_path / "unknown.pt")
    payload["version"] = FORMAT_VERSION + 1
    torch.save(payload, tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match="Upgrade"):
        load_model_checkpoint(tmp_path / "newer.pt")


class _Exploit:
    """Unpickling this would create a marker file; a safe loader must refuse it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_touch, (self.marker,))


def _touch(path: str) -> None:
    open(path, "w").close()


def test_files_needing_code_execution_are_refused(tmp_path):
    marker = tmp_path / "executed"
    torch.save({"fusion": _Exploit(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_model_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_unreadable_and_incomplete_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        load_model_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_model_checkpoint(tmp_path / "junk.pt")
    _, lossgen = nets()
    torch.save(lossgen.state_dict(), tmp_path / "lpn_only.pth")
    with pytest.raises(CheckpointError, match="no fusion network"):
        load_model_checkpoint(tmp_path / "lpn_only.pth")
    torch.save({"epoch": 3, "notes": "hello"}, tmp_path / "meta.pth")
    with pytest.raises(CheckpointError, match="epoch, notes"):
        load_model_checkpoint(tmp_path / "meta.pth")
