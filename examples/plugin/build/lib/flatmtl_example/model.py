"""``two_towers``: a shared trunk and a small tower per task."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from flatmtl.workers.problems import MultiTaskNet, Task


class TwoTowers(MultiTaskNet):
    def __init__(self, in_features: int, out_features: Sequence[int], hidden: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(in_features, hidden), nn.Tanh())
        self.towers = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, out)) for out in out_features
        )

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())

    def task_parameters(self) -> list[list[nn.Parameter]]:
        return [list(tower.parameters()) for tower in self.towers]

    def forward_with_representation(self, x: Tensor | list[Tensor]) -> tuple[list[Tensor], Tensor]:
        if not isinstance(x, Tensor):
            raise TypeError("two_towers takes one input tensor")
        representation = self.trunk(x.flatten(1))
        return [tower(representation) for tower in self.towers], representation


def two_towers(input_shape: Sequence[int], tasks: Sequence[Task], *, hidden: int = 32) -> TwoTowers:
    """The entry point: FlatMTL calls it with the problem's input shape and tasks, plus the spec's model_options."""
    in_features = 1
    for size in input_shape:
        in_features *= size
    return TwoTowers(in_features, [task.kind.out_channels for task in tasks], hidden)
