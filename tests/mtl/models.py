"""Small hard-parameter-sharing models for the core's tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TinyHPS(nn.Module):
    """Shared MLP trunk (with BatchNorm, to check buffers stay put) and one linear head per task."""

    def __init__(self, num_tasks: int = 3, in_features: int = 6, hidden: int = 8, batch_norm: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_features, hidden)]
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(nn.Tanh())
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(num_tasks))

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())

    def task_parameters(self) -> list[list[nn.Parameter]]:
        return [list(head.parameters()) for head in self.heads]

    def task_losses(self, x: Tensor, targets: Tensor) -> Tensor:
        features = self.trunk(x)
        predictions = torch.cat([head(features) for head in self.heads], dim=1)
        return ((predictions - targets) ** 2).mean(dim=0)


def tiny_problem(num_tasks: int = 3, seed: int = 0, batch: int = 16) -> tuple[TinyHPS, Tensor, Tensor]:
    torch.manual_seed(seed)
    model = TinyHPS(num_tasks).double()
    x = torch.randn(batch, 6, dtype=torch.float64)
    targets = torch.randn(batch, num_tasks, dtype=torch.float64)
    return model, x, targets
