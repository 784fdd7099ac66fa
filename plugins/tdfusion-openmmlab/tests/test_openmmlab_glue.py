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
