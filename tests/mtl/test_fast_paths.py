"""Per-task gradients only where the method needs them: an averaging aggregator takes one backward of the
weighted sum, and per-task gradients with their Gram come only on diagnostics steps (or every step for a
weighting that observes the Gram)."""

from __future__ import annotations

import math

import pytest
import torch

from flatmtl.workers import mtl
from tests.mtl.models import tiny_problem


def grads_after_steps(
    weighting: str, diagnostics_every: int, steps: int = 2
) -> tuple[list[torch.Tensor], mtl.StepRecord]:
    """The .grad of every parameter (model, then the weighting's) after the last of ``steps`` calls, with
    the parameters left where they were (no optimizer), so every call sees the same point."""
    model, x, targets = tiny_problem(num_tasks=4)
    step = mtl.MTLStep.from_model(model, weighting=weighting, seed=3, diagnostics_every=diagnostics_every)
    for _ in range(steps):
        for param in [*model.parameters(), *step.parameters()]:
            param.grad = None
        record = step(lambda: model.task_losses(x, targets).abs() + 0.1)
    return [p.grad.clone() for p in [*model.parameters(), *step.parameters()]], record


@pytest.mark.parametrize("weighting", ["ew", "uw", "imtl_l", "rlw", "famo", "gls", "si", "dwa"])
def test_one_backward_of_the_weighted_sum_equals_the_per_task_mean(weighting: str) -> None:
    per_task, per_task_record = grads_after_steps(weighting, diagnostics_every=1)
    one_backward, record = grads_after_steps(weighting, diagnostics_every=2)
    assert per_task_record.backward_passes == 4 and per_task_record.gram is not None
    assert record.backward_passes == 1 and record.gram is None
    for a, b in zip(one_backward, per_task, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_diagnostics_steps_record_the_per_task_gram() -> None:
    model, x, targets = tiny_problem(num_tasks=3)
    step = mtl.MTLStep.from_model(model, diagnostics_every=3)
    grams = [step(lambda: model.task_losses(x, targets)).gram for _ in range(7)]
    assert [g is not None for g in grams] == [True, False, False, True, False, False, True]
    losses = model.task_losses(x, targets)
    rows = [
        torch.cat([g.flatten() for g in torch.autograd.grad(losses[k], model.shared_parameters(), retain_graph=True)])
        for k in range(3)
    ]
    jacobian = torch.stack(rows)
    for gram in grams[::3]:
        torch.testing.assert_close(gram, jacobian @ jacobian.T, rtol=0, atol=1e-12)


def test_a_weighting_that_observes_the_gram_gets_per_task_gradients_every_step() -> None:
    _, record = grads_after_steps("gradnorm", diagnostics_every=1000)
    assert record.gram is not None and record.backward_passes == 3 + 1


def test_a_non_gram_aggregator_computes_no_gram_outside_diagnostics_steps() -> None:
    model, x, targets = tiny_problem()
    step = mtl.MTLStep.from_model(model, aggregator="graddrop", diagnostics_every=2)
    records = [step(lambda: model.task_losses(x, targets)) for _ in range(2)]
    assert records[0].gram is not None and records[1].gram is None


@pytest.mark.parametrize("every", [0, -1, 1.5, True])
def test_diagnostics_every_must_be_a_positive_integer(every: object) -> None:
    model, _, _ = tiny_problem()
    with pytest.raises(mtl.MethodError, match=r"diagnostics_every=.* allowed: an integer >= 1"):
        mtl.MTLStep.from_model(model, diagnostics_every=every)


@pytest.mark.parametrize("aggregator", ["mean", "upgrad", "graddrop", "moco", "pcgrad"])
def test_non_finite_gradients_are_named_from_the_cheap_check(aggregator: str) -> None:
    grads = torch.randn(3, 50, dtype=torch.float64)
    grads[2, 17] = math.inf
    method = mtl.aggregator(aggregator)
    with pytest.raises(mtl.MethodError, match=r"gradients contain NaN or inf \(first at index \[2, 17\]\)"):
        method(grads, losses=torch.ones(3, dtype=torch.float64))
    if aggregator == "moco":
        assert method.state_dict()["tracked"] is None  # the state did not move
