"""Multi-gate mixture of experts (Ma et al., KDD 2018) for tabular inputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flatmtl.workers.problems.errors import ProblemError
from flatmtl.workers.problems.models.base import MultiTaskNet
from flatmtl.workers.problems.models.encoders import MLPEncoder


class MMoE(MultiTaskNet):
    """Shared MLP experts; each task mixes them with its own softmax gate on the input and reads the mix with
    its own tower. The stacked expert outputs [N, E, D] are the shared representation."""

    def __init__(
        self,
        input_shape: Sequence[int],
        out_features: Sequence[int],
        *,
        num_experts: int = 8,
        expert_hidden: Sequence[int] = (64, 32),
        tower_hidden: int = 16,
    ) -> None:
        super().__init__()
        self.experts = nn.ModuleList(MLPEncoder(input_shape, expert_hidden) for _ in range(num_experts))
        in_features = int(torch.tensor(input_shape).prod())
        width = expert_hidden[-1]
        self.gates = nn.ModuleList(
            nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_experts), nn.Softmax(dim=1)) for _ in out_features
        )
        self.towers = nn.ModuleList(
            nn.Sequential(nn.Linear(width, tower_hidden), nn.ReLU(), nn.Linear(tower_hidden, out))
            for out in out_features
        )

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.experts.parameters())

    def task_parameters(self) -> list[list[nn.Parameter]]:
        return [[*gate.parameters(), *tower.parameters()] for gate, tower in zip(self.gates, self.towers, strict=True)]

    def forward_with_representation(self, x: Tensor | list[Tensor]) -> tuple[list[Tensor], Tensor]:
        if not isinstance(x, Tensor):
            raise ProblemError("mmoe takes one input tensor, got a list")
        representation = torch.stack([expert(x) for expert in self.experts], dim=1)
        outputs = []
        for gate, tower in zip(self.gates, self.towers, strict=True):
            mixed = (gate(x).unsqueeze(2) * representation).sum(dim=1)
            outputs.append(tower(mixed))
        return outputs, representation
