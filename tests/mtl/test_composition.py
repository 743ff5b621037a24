"""Every weighting x aggregator x wrapper triple builds by name, takes a finite step on a small HPS
model with K=3, and its state round-trips: a restored copy takes the identical next step."""

from __future__ import annotations

import itertools

import pytest
import torch

from flatmtl.workers import mtl
from tests.mtl.models import tiny_problem

TRIPLES = list(
    itertools.product(
        [m.name for m in mtl.methods("weighting")],
        [m.name for m in mtl.methods("aggregator")],
        [m.name for m in mtl.methods("wrapper")],
    )
)


def _two_steps(weighting: str, aggregator: str, wrapper: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One step, a checkpoint, then the next step from the original and from a restored copy."""
    model, x, targets = tiny_problem(num_tasks=3, seed=1)
    step = mtl.MTLStep.from_model(model, weighting=weighting, aggregator=aggregator, wrapper=wrapper, seed=3)
    optimizer = torch.optim.SGD([*model.parameters(), *step.parameters()], lr=0.05)

    def closure() -> torch.Tensor:
        return model.task_losses(x, targets)

    step(closure)
    optimizer.step()
    for param in [*model.parameters(), *step.parameters()]:
        assert torch.isfinite(param).all()
    checkpoint = {
        "model": model.state_dict(),
        "step": step.state_dict(),
        "weights": [p.detach().clone() for p in step.parameters()],
    }

    step(closure)
    continued = [p.grad.clone() for p in model.parameters()]

    twin, _, _ = tiny_problem(num_tasks=3, seed=1)
    twin.load_state_dict(checkpoint["model"])
    twin_step = mtl.MTLStep.from_model(twin, weighting=weighting, aggregator=aggregator, wrapper=wrapper, seed=99)
    twin_step.load_state_dict(checkpoint["step"])
    with torch.no_grad():
        for param, value in zip(twin_step.parameters(), checkpoint["weights"], strict=True):
            param.copy_(value)
    twin_step(lambda: twin.task_losses(x, targets))
    restored = [p.grad.clone() for p in twin.parameters()]
    return continued, restored


@pytest.mark.parametrize(("weighting", "aggregator", "wrapper"), TRIPLES)
def test_triple_steps_finitely_and_resumes_identically(weighting: str, aggregator: str, wrapper: str) -> None:
    continued, restored = _two_steps(weighting, aggregator, wrapper)
    for a, b in zip(continued, restored, strict=True):
        assert torch.isfinite(a).all()
        assert torch.equal(a, b)
