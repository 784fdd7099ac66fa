"""``eval_mode`` (:mod:`tdfusion_core.common.modes`) puts modules in eval mode and restores every submodule's mode."""

from __future__ import annotations

import pytest
from torch import nn

from tdfusion_core.common.modes import eval_mode


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.Dropout(0.5))


def test_modules_are_in_eval_mode_inside_and_get_their_own_modes_back():
    net, other = _net(), _net().eval()
    net[1].eval()  # a frozen BatchNorm inside a training network
    with eval_mode(net, other):
        assert not any(m.training for m in [*net.modules(), *other.modules()])
    assert [m.training for m in net.modules()] == [True, True, False, True]
    assert not any(m.training for m in other.modules())


def test_modes_are_restored_when_the_block_raises():
    net = _net()
    with pytest.raises(RuntimeError, match="inside"), eval_mode(net):
        raise RuntimeError("inside")
    assert all(m.training for m in net.modules())
