"""A quick end-to-end check: the MLP learns both multi_digits tasks through the MTL step and the problem API."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from flatmtl.workers import problems
from flatmtl.workers.mtl import MTLStep


def test_sgd_on_multi_digits_lifts_both_tasks_well_above_chance() -> None:
    torch.manual_seed(0)
    problem = problems.build("multi_digits", seed=0, train_size=4000, test_size=1000)
    model = problem.model("mlp", hidden=(128,))
    before = problem.evaluate(model, "test")
    step = MTLStep.from_model(model, weighting="ew", aggregator="mean", seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = DataLoader(problem.dataset("train"), batch_size=64, shuffle=True, drop_last=True)
    steps = 0
    while steps < 300:
        for x, targets in loader:
            optimizer.zero_grad()
            step(lambda x=x, targets=targets: problem.losses(model(x), targets))
            optimizer.step()
            steps += 1
            if steps == 300:
                break
    after = problem.evaluate(model, "test")
    for task in problem.task_names:
        assert before[f"{task}/accuracy"] < 0.2  # chance is 0.1
        assert after[f"{task}/accuracy"] > 0.6, after
        assert after[f"{task}/brier"] < before[f"{task}/brier"]
