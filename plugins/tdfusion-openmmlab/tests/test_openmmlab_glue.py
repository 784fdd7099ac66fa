"""The OpenMMLab glue shared by tdfusion-mmseg and tdfusion-mmdet: module aliasing, one-channel stems, readiness."""

from __future__ import annotations

import torch


def test_unaliased_shared_modules_survive_functional_call() -> None:
    from tdfusion_openmmlab.glue import unalias_shared_modules
    from torch.func import functional_call

    class Head(torch.nn.Module):  # RTMDet-style: one conv reachable under two names
        def __init__(self) -> None:
            super().__init__()
            self.levels = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(3, 3)) for _ in range(2)])
            self.levels[1][0] = self.levels[0][0]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.levels[0](x) + 2 * self.levels[1](x)

    head = Head()
    x = torch.rand(4, 3)
    keys, params, out = list(head.state_dict()), list(head.parameters()), head(x)
    assert unalias_shared_modules(head) == ["levels.1.0"]
    assert head.levels[1][0] is not head.levels[0][0]
    assert head.levels[1][0].weight is head.levels[0][0].weight  # still tied
    assert list(head.state_dict()) == keys and list(head.parameters()) == params
    torch.testing.assert_close(head(x), out)

    new = {name: p + 1.0 for name, p in head.named_parameters()}
    got = functional_call(head, new, (x,))
    torch.testing.assert_close(got, 3 * (x @ new["levels.0.0.weight"].T + new["levels.0.0.bias"]))
    for p, original in zip(head.parameters(), params):
        assert p is original
    torch.testing.assert_close(head(x), out)  # nothing substituted was left behind


# ------------------------------------------------------------------------------------------------ luminance stems
def test_summed_rgb_weight_answers_a_grey_image_as_the_rgb_layer() -> None:
    from tdfusion_openmmlab.luminance import convert_first_conv, is_rgb_weight_for_luminance, rgb_to_luminance_weight

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 1))
    grey = torch.rand(2, 1, 9, 11)
    expected = net(grey.expand(2, 3, 9, 11))
    rgb_weight = net[0].weight.detach().clone()
    assert convert_first_conv(net) == "0"
    assert net[0].in_channels == 1 and net[2].in_channels == 8  # only the first RGB convolution changes
    torch.testing.assert_close(net(grey), expected)
    assert is_rgb_weight_for_luminance(rgb_weight, net[0].weight)
    assert not is_rgb_weight_for_luminance(net[2].weight, net[2].weight)
    # YOLOX's Focus stacks four shifted copies of the image (channel g * 3 + c): summed per copy
    focus = torch.rand(5, 12, 3, 3)
    torch.testing.assert_close(rgb_to_luminance_weight(focus)[:, 2], focus[:, 6:9].sum(1))


def test_in_channels_is_set_only_where_the_constructor_takes_it() -> None:
    from tdfusion_openmmlab.luminance import accepts_in_channels, set_config_in_channels

    class Direct(torch.nn.Module):
        def __init__(self, in_channels: int = 3, depth: int = 1) -> None:
            super().__init__()

    class Forwarding(Direct):  # ResNetV1c-style: **kwargs reach a base that takes in_channels
        def __init__(self, **kwargs: int) -> None:
            super().__init__(**kwargs)

    class HardCoded(torch.nn.Module):  # CSPNeXt-style: three channels hard-coded
        def __init__(self, depth: int = 1) -> None:
            super().__init__()

    assert accepts_in_channels(Direct) and accepts_in_channels(Forwarding) and not accepts_in_channels(HardCoded)
    cfg: dict[str, object] = {"type": "X"}
    assert set_config_in_channels(cfg, Forwarding) and cfg["in_channels"] == 1
    cfg = {"type": "Y"}
    assert not set_config_in_channels(cfg, HardCoded) and "in_channels" not in cfg


class _WritesMarker:
    """Unpickling it would create ``path``: the stand-in for a malicious checkpoint."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (self.path, "w")


def test_a_checkpoint_that_would_run_code_is_refused_with_safe_advice(tmp_path) -> None:
    import pytest
    from tdfusion_openmmlab.glue import load_weights

    from tdfusion_core.common.torch_files import CheckpointError

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "meta": _WritesMarker(str(marker))}, path)
    with pytest.raises(CheckpointError) as info:
        load_weights(None, path)  # type: ignore[arg-type]  # refused before the network is touched
    message = str(info.value)
    assert not marker.exists()
    assert "evil.pth" in message and "refused" in message and "\n" not in message
    assert "weights_only=False" not in message and "safe_globals" in message
    empty = tmp_path / "empty.pth"
    empty.touch()
    with pytest.raises(CheckpointError, match="empty"):
        load_weights(None, empty)  # type: ignore[arg-type]
