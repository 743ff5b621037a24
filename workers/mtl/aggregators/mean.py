"""Equal weighting of task gradients (EW)."""

from __future__ import annotations

import torch
from torch import Tensor

from flatmtl.workers.mtl.base import GramAggregator
from flatmtl.workers.mtl.registry import register


@register(
    "aggregator",
    "mean",
    description="Average of the task gradients (equal weighting).",
    paper="-",
    scale="mean: weights 1/K",
)
class Mean(GramAggregator):
    """Weights 1/K: the update is the mean of the task gradients, the gradient of the mean loss."""

    def compute_weights(self, gram: Tensor, *, losses: Tensor | None, generator: torch.Generator | None) -> Tensor:
        num_tasks = gram.shape[0]
        return torch.full((num_tasks,), 1.0 / num_tasks, dtype=gram.dtype, device=gram.device)
