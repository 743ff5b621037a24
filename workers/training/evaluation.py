"""Per-task metrics of a model on a split, with the samples spread over ranks.

Meters keep summable float64 statistics, so each rank scores a disjoint share (every N-th sample) and the
states are summed across ranks before ``compute()``: the result equals a one-process evaluation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from flatmtl.workers.problems import MultiTaskNet, Problem
from flatmtl.workers.training.data import collate, model_input, to_device

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
) -> dict[str, float]:
    """``{"task/metric": value}`` in eval mode; the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    metric_set = problem.metrics()
    if problem.multi_input:
        for task, data in enumerate(problem.task_datasets(split)):
            indices = list(range(rank, len(data), world_size))  # type: ignore[arg-type]
            for start in range(0, len(indices), batch_size):
                x, y = to_device(collate(data, indices[start : start + batch_size]), device, dtype)
                inputs = [x if t == task else x[:0] for t in range(problem.num_tasks)]
                metric_set.update_task(task, model(inputs)[task], y)
    else:
        data = problem.dataset(split)
        indices = list(range(rank, len(data), world_size))  # type: ignore[arg-type]
        for start in range(0, len(indices), batch_size):
            x, targets = to_device(collate(data, indices[start : start + batch_size]), device, dtype)
            metric_set.update(model(model_input(x)), targets)
    for meter in metric_set.meters:
        meter.state.copy_(sum_over_ranks(meter.state))
    model.train(was_training)
    return metric_set.compute()
