"""Per-task metrics of a model on a split, with the samples spread over ranks.

Meters keep summable float64 statistics, so each rank scores a disjoint share (every N-th sample) and the
states are summed across ranks before ``compute()``: the result equals a one-process evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from flatmtl.workers.problems import MultiTaskNet, Problem
from flatmtl.workers.training.data import Prefetcher, ProcessPrefetcher, model_input, prefetch

Reducer = Callable[[Tensor], Tensor]


def _identity(tensor: Tensor) -> Tensor:
    return tensor


@torch.no_grad()
def evaluate(
    problem: Problem,
    model: MultiTaskNet,
    split: str,
    *,
    device: torch.device,
    dtype: torch.dtype,
    batch_size: int = 256,
    rank: int = 0,
    world_size: int = 1,
    sum_over_ranks: Reducer = _identity,
    loader_workers: int = 0,
) -> dict[str, float]:
    """``{"task/metric": value}`` in eval mode; the model's mode is restored afterwards. Batches are collated
    ahead as in training, by ``loader_workers`` processes (0: a thread)."""
    was_training = model.training
    model.eval()
    metric_set = problem.metrics()

    def batches(data: Dataset[Any]) -> Prefetcher | ProcessPrefetcher:
        indices = np.arange(rank, len(data), world_size)  # type: ignore[arg-type]
        chunks = enumerate(indices[start : start + batch_size] for start in range(0, len(indices), batch_size))
        return prefetch(data, chunks, device, dtype, loader_workers)

    if problem.multi_input:
        for task, data in enumerate(problem.task_datasets(split)):
            with batches(data) as loaded:
                for _, _, (x, y) in loaded:
                    inputs = [x if t == task else x[:0] for t in range(problem.num_tasks)]
                    metric_set.update_task(task, model(inputs)[task], y)
    else:
        with batches(problem.dataset(split)) as loaded:
            for _, _, (x, targets) in loaded:
                metric_set.update(model(model_input(x)), targets)
    for meter in metric_set.meters:
        meter.state.copy_(sum_over_ranks(meter.state))
    model.train(was_training)
    return metric_set.compute()
