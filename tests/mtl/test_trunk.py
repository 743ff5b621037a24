"""The two-stage per-task gradients (heads, then one trunk backward) equal the whole-graph ones.

A model that declares its task heads gets the cut path; the same model without the declaration gets
the whole-graph path. Every primitive the wrappers use (per-task gradients, one task's gradient, the
mean gradient, the representation's gradients for MGDA-UB) must give the same step either way.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from flatmtl.workers import mtl
from flatmtl.workers.mtl.step import ParameterSplit
from flatmtl.workers.problems.models.encoders import MLPEncoder
from flatmtl.workers.problems.models.hps import HardSharing
from tests.mtl.models import TinyHPS


class DeclaredHeads(TinyHPS):
    def task_heads(self) -> list[nn.Module]:
        return list(self.heads)

    def losses_and_representation(self, x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        features = self.trunk(x)
        predictions = torch.cat([head(features) for head in self.heads], dim=1)
        return ((predictions - targets) ** 2).mean(dim=0), features


def grads_after_step(declare_heads: bool, weighting: str, aggregator: str, wrapper: str) -> list[Tensor]:
    torch.manual_seed(0)
    model = DeclaredHeads(num_tasks=3, batch_norm=False).double()
    x = torch.randn(16, 6, dtype=torch.float64)
    targets = torch.randn(16, 3, dtype=torch.float64)
    split = ParameterSplit.from_model(model)
    if not declare_heads:
        split.task_heads = None
    step = mtl.MTLStep(split, weighting=weighting, aggregator=aggregator, wrapper=wrapper, seed=3)
    for _ in range(2):  # the second step sees warm states (EMAs, previous weights)
        model.zero_grad()
        step(lambda: model.losses_and_representation(x, targets))
    assert (step.trunk is not None and step.trunk.active) == declare_heads
    return [p.grad.clone() for p in [*model.parameters(), *step.parameters()]]


@pytest.mark.parametrize("wrapper", ["none", "sam", "g_sam", "l_sam", "fmtl", "samo"])
@pytest.mark.parametrize(
    ("weighting", "aggregator"), [("ew", "mean"), ("uw", "mgda"), ("dwa", "pcgrad"), ("ew", "mgda_ub")]
)
def test_cut_path_gives_the_whole_graph_step(weighting: str, aggregator: str, wrapper: str) -> None:
    cut = grads_after_step(True, weighting, aggregator, wrapper)
    whole = grads_after_step(False, weighting, aggregator, wrapper)
    for a, b in zip(cut, whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_multi_input_heads_read_their_own_slices() -> None:
    """Office-Home style: each task's input goes through the trunk; heads read different tensors."""
    torch.manual_seed(0)
    model = HardSharing(MLPEncoder((5,), hidden=(7,)), [nn.Linear(7, 2) for _ in range(3)], multi_input=True).double()
    inputs = [torch.randn(4 + k, 5, dtype=torch.float64) for k in range(3)]
    labels = [torch.randint(0, 2, (4 + k,)) for k in range(3)]

    def losses() -> Tensor:
        outputs = model(inputs)
        return torch.stack([nn.functional.cross_entropy(o, y) for o, y in zip(outputs, labels, strict=True)])

    results = []
    for declare in (True, False):
        split = ParameterSplit.from_model(model)
        if not declare:
            split.task_heads = None
        step = mtl.MTLStep(split, aggregator="mgda", wrapper="fmtl", seed=0)
        model.zero_grad()
        step(losses)
        results.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_head_count_must_match_tasks() -> None:
    model = DeclaredHeads(num_tasks=3)
    split = ParameterSplit.from_model(model)
    split.task_heads = split.task_heads[:2] if split.task_heads else None
    with pytest.raises(mtl.MethodError, match="2 task heads for 3 tasks"):
        split.check()


def test_task_rows_sum_each_tasks_leaves_and_leave_unowned_rows_zero() -> None:
    """Heads reading the trunk at several points (or not at all): row k is the sum of task k's leaf gradients."""
    from flatmtl.workers.mtl.trunk import _task_rows

    grads = [torch.full((2,), float(value), dtype=torch.float64) for value in (1, 2, 4)]
    rows = _task_rows([2, 0, 2], grads, num_tasks=3)
    assert torch.equal(rows, torch.tensor([[2.0, 2.0], [0.0, 0.0], [5.0, 5.0]], dtype=torch.float64))
    assert torch.equal(_task_rows([0, 1], grads[:2], num_tasks=2), torch.stack(grads[:2]))
