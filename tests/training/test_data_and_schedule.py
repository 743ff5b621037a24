"""The data plan's rank shards and the learning-rate schedule, from their definitions."""

from __future__ import annotations

import math
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from flatmtl.service.specs.train import SchedulerConfig
from flatmtl.workers.training import RunDirectory, RunOptions, train
from flatmtl.workers.training.checkpoint import load
from flatmtl.workers.training.data import (
    AUTO_LOADER_WORKERS,
    BatchPlan,
    ProcessPrefetcher,
    prefetch,
    resolve_workers,
)
from flatmtl.workers.training.optim import lr_factor
from tests.training.specs import spec


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


class PerSample(Dataset[tuple[Tensor, tuple[Tensor, Tensor]]]):
    """Samples built one at a time, as datasets that read a file per sample are (no ``batch``)."""

    def __len__(self) -> int:
        return 30

    def __getitem__(self, index: int) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if index >= len(self):
            raise IndexError(f"sample {index} of {len(self)}")
        x = torch.arange(3.0) + 3 * index
        return x, (torch.tensor(index), x.sum())


@pytest.mark.parametrize("start", [0, 3])
def test_worker_processes_hand_over_the_same_batches_in_the_same_order(start: int) -> None:
    """From the epoch's start or from a resumed position, 2 loader processes give the batches one thread gives,
    leave the training thread's random stream as it was, and stop with the loop, early or not."""
    dataset, plan, cpu = PerSample(), BatchPlan(30, 4, seed=5), torch.device("cpu")
    with prefetch(dataset, plan.batches(1, start), cpu, torch.float64, workers=0) as batches:
        threaded = list(batches)
    state = torch.get_rng_state()
    with prefetch(dataset, plan.batches(1, start), cpu, torch.float64, workers=2) as batches:
        assert isinstance(batches, ProcessPrefetcher)
        processes = list(batches)
    assert torch.equal(torch.get_rng_state(), state)
    assert [b for b, _, _ in processes] == [b for b, _, _ in threaded] == list(range(start, plan.steps_per_epoch))
    for (_, indices, (x, (y, z))), (_, planned, expected) in zip(processes, threaded, strict=True):
        assert np.array_equal(indices, planned) and x.dtype == z.dtype == torch.float64 and y.dtype == torch.int64
        assert torch.equal(x, expected[0]) and torch.equal(y, expected[1][0]) and torch.equal(z, expected[1][1])
        assert torch.equal(y, torch.as_tensor(indices))
    with prefetch(dataset, plan.batches(0), cpu, torch.float32, workers=2) as batches:
        next(iter(batches))
        assert len(multiprocessing.active_children()) == 2
    assert not multiprocessing.active_children()
    with (
        pytest.raises(IndexError, match="sample 99"),
        prefetch(dataset, iter([(0, np.array([1, 99]))]), cpu, torch.float32, workers=2) as failing,
    ):
        list(failing)


def test_automatic_loader_workers_only_for_per_sample_data_ahead_of_a_gpu() -> None:
    in_memory = TensorDataset(torch.zeros(4, 2))
    in_memory.batch = lambda indices: in_memory[indices]  # type: ignore[attr-defined]
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_workers(None, PerSample(), cpu, None) == resolve_workers(None, in_memory, cuda, None) == 0
    assert 1 <= resolve_workers(None, PerSample(), cuda, None) <= AUTO_LOADER_WORKERS
    assert resolve_workers(None, PerSample(), cuda, 1) == 1
    assert resolve_workers(3, in_memory, cpu, 1) == 3


def test_a_run_trains_on_the_same_batches_with_loader_processes_and_resumes_exactly(tmp_path: Path) -> None:
    """One thread straight through, against 2 loader processes stopped mid-epoch and resumed with 1: the same
    losses at every step and the same final weights, bit for bit (the worker count is no part of the
    checkpoint's compatibility)."""
    straight = train(spec(loader_workers=0), tmp_path / "thread", options=RunOptions(plots=False))
    stopped = train(spec(loader_workers=2), tmp_path / "processes", options=RunOptions(plots=False, max_steps=4))
    assert stopped.status == "STOPPED" and stopped.summary["position"] == {"epoch": 0, "batch": 4}
    resumed = train(spec(loader_workers=1), tmp_path / "processes", resume=True, options=RunOptions(plots=False))
    assert straight.status == resumed.status == "SUCCEEDED" and straight.summary["steps"] == resumed.summary["steps"]
    a, b = RunDirectory(straight.run_dir), RunDirectory(resumed.run_dir)
    assert [line["loss"] for line in a.read_lines(a.step_metrics)] == [
        line["loss"] for line in b.read_lines(b.step_metrics)
    ]
    evaluations = [
        [
            {key: value for key, value in line.items() if key.startswith("test/")}
            for line in run.read_lines(run.epoch_metrics)
        ]
        for run in (a, b)
    ]
    assert evaluations[0] == evaluations[1] and evaluations[0][0]
    expected, found = load(a.latest)["model"], load(b.latest)["model"]
    assert all(torch.equal(expected[name], found[name]) for name in expected)
