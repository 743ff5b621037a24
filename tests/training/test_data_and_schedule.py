"""The data plan's rank shards and the learning-rate schedule, from their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flatmtl.service.specs.train import SchedulerConfig
from flatmtl.workers.training.data import BatchPlan
from flatmtl.workers.training.optim import lr_factor


def test_rank_shards_partition_the_one_process_global_batches() -> None:
    size, batch, world = 103, 8, 3
    whole = BatchPlan(size, batch * world, seed=7)
    ranks = [BatchPlan(size, batch, world_size=world, rank=r, seed=7) for r in range(world)]
    assert all(plan.steps_per_epoch == whole.steps_per_epoch == size // (batch * world) for plan in ranks)
    for epoch in range(2):
        per_rank = [list(plan.batches(epoch)) for plan in ranks]
        for index, (batch_index, expected) in enumerate(whole.batches(epoch)):
            shards = [per_rank[r][index][1] for r in range(world)]
            assert all(per_rank[r][index][0] == batch_index for r in range(world))
            assert np.array_equal(np.concatenate(shards), expected)
    assert not np.array_equal(whole.order(0), whole.order(1))
    resumed = list(ranks[1].batches(1, start=2))
    assert [b for b, _ in resumed] == [2, 3] and np.array_equal(resumed[0][1], per_rank[1][2][1])


def test_a_global_batch_larger_than_the_data_is_refused() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        BatchPlan(10, 8, world_size=2)


def test_schedules() -> None:
    steps, epochs = 4, 6
    warm = lr_factor(
        SchedulerConfig(name="constant", warmup_epochs=2), base_lr=0.1, epochs=epochs, steps_per_epoch=steps
    )
    assert [warm(s) for s in range(9)] == [pytest.approx((s + 1) / 8) for s in range(8)] + [1.0]

    cosine = lr_factor(
        SchedulerConfig(name="cosine", warmup_epochs=1, min_lr=0.01), base_lr=0.1, epochs=epochs, steps_per_epoch=steps
    )
    assert cosine(steps) == pytest.approx(1.0)
    middle = steps + (epochs - 1) * steps // 2
    assert cosine(middle) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cosine(epochs * steps) == pytest.approx(0.1)

    step = lr_factor(
        SchedulerConfig(name="step", step_size=2, gamma=0.5), base_lr=0.1, epochs=epochs, steps_per_epoch=steps
    )
    assert [step(e * steps) for e in range(epochs)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def test_the_prefetcher_hands_over_the_plans_batches_in_order_and_stops_early() -> None:
    """Collated ahead in a thread, the batches are exactly the plan's; a loop that stops early ends the thread,
    and a dataset that fails raises in the training thread."""
    import torch
    from torch.utils.data import TensorDataset

    from flatmtl.workers.training.data import Prefetcher, collate

    dataset = TensorDataset(torch.arange(40.0).view(20, 2), torch.arange(20))
    plan = BatchPlan(20, 4, seed=1)
    cpu = torch.device("cpu")
    with Prefetcher(dataset, plan.batches(0), cpu, torch.float64, depth=2) as batches:
        seen = list(batches)
    assert [b for b, _, _ in seen] == list(range(plan.steps_per_epoch))
    for (_, indices, (x, y)), (_, planned) in zip(seen, plan.batches(0), strict=True):
        expected_x, expected_y = collate(dataset, planned)
        assert np.array_equal(indices, planned) and x.dtype == torch.float64
        assert torch.equal(x, expected_x.double()) and torch.equal(y, expected_y)
    with Prefetcher(dataset, plan.batches(0), cpu, torch.float32, depth=1) as batches:
        first = next(iter(batches))
    assert first[0] == 0 and not batches._thread.is_alive()
    with pytest.raises(IndexError), Prefetcher(dataset, iter([(0, np.array([99]))]), cpu, torch.float32) as failing:
        list(failing)
