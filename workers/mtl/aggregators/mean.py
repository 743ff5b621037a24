"""Equal weighting of task gradients (EW)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from flatmtl.workers.mtl.base import GramAggregator, GramReducer
from flatmtl.workers.mtl.registry import register


@register(
    "aggregator",
    "mean",
    description="Average of the task gradients (equal weighting).",
    paper="-",
    scale="mean: weights 1/K",
)
class Mean(GramAggregator):
    """Weights 1/K: the update is the mean of the task gradients, the gradient of the mean loss.

    The mean needs no Gram: on a [K, P] matrix it is one pass, checked for finiteness on the [P] result;
    a step takes it as one backward of the weighted losses' sum (``averages_gradients``)."""

    averages_gradients: ClassVar[bool] = True
    update_checked_by_gram: ClassVar[bool] = False

    def aggregate(
        self,
        grads: Tensor,
        *,
        losses: Tensor | None,
        generator: torch.Generator | None,
        reduce_gram: GramReducer,
    ) -> Tensor:
        num_tasks = grads.shape[0]
        weights = grads.new_full((num_tasks,), 1.0 / num_tasks)
        return weights @ grads  # a matrix-vector product: cheaper than mean(dim=0) at small K

    def compute_weights(self, gram: Tensor, *, losses: Tensor | None, generator: torch.Generator | None) -> Tensor:
        num_tasks = gram.shape[0]
        return torch.full((num_tasks,), 1.0 / num_tasks, dtype=gram.dtype, device=gram.device)
