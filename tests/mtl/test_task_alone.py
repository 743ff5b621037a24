"""A per-task SAM point evaluates its own task only where the model declares its heads.

F-MTL and L-SAM take each task's gradient at that task's own point. Only task k's loss is differentiated
there, so the forward runs the trunk and head k; the other heads replay their outputs of the step's first
forward, without graph. The gradient must be the one of the whole forward, and the heads must run as often
as the definition needs: once at theta, once at their own point.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import Tensor, nn

from flatmtl.workers import mtl
from flatmtl.workers.mtl.step import ParameterSplit
from tests.mtl.models import TinyHPS

K = 4


class CountingHead(nn.Linear):
    """A linear head that counts how often its own forward runs."""

    def __init__(self, in_features: int) -> None:
        super().__init__(in_features, 1)
        self.runs = 0

    def forward(self, x: Tensor) -> Tensor:
        self.runs += 1
        return super().forward(x)


class CountedHeads(TinyHPS):
    def __init__(self) -> None:
        super().__init__(K, hidden=8)
        self.heads = nn.ModuleList(CountingHead(8) for _ in range(K))

    def task_heads(self) -> list[nn.Module]:
        return list(self.heads)


def _problem(declare_heads: bool, wrapper: str = "fmtl") -> tuple[CountedHeads, mtl.MTLStep, Tensor, Tensor]:
    torch.manual_seed(0)
    model = CountedHeads().double()
    x = torch.randn(16, 6, dtype=torch.float64)
    targets = torch.randn(16, K, dtype=torch.float64)
    split = ParameterSplit.from_model(model)
    if not declare_heads:
        split.task_heads = None
    step = mtl.MTLStep(split, weighting="uw", wrapper=wrapper, buffers=list(model.buffers()))
    return model, step, x, targets


def test_one_task_gradient_at_a_moved_point_is_the_whole_forwards() -> None:
    model, step, x, targets = _problem(declare_heads=True)
    oracle = step.oracle(lambda: model.task_losses(x, targets))
    oracle.task_gradients(oracle.losses())  # the step's forward at theta, which records the heads' outputs
    generator = torch.Generator().manual_seed(1)
    with oracle.displaced() as move:
        for task in range(K):
            offset = 0.3 * torch.randn(oracle.shared.numel, generator=generator, dtype=torch.float64)
            head_offset = 0.3 * torch.randn(oracle.heads[task].numel, generator=generator, dtype=torch.float64)
            move(offset, {task: head_offset})
            runs = [head.runs for head in model.heads]
            shared, head = oracle.task_gradient_alone(task)
            assert [head.runs - before for head, before in zip(model.heads, runs, strict=True)] == [
                int(other == task) for other in range(K)
            ]
            whole_shared, whole_head = oracle.task_gradient(oracle.losses(per_task=False), task)
            torch.testing.assert_close(shared, whole_shared, rtol=0, atol=1e-12)
            torch.testing.assert_close(head, whole_head, rtol=0, atol=1e-12)
    assert all("forward" not in vars(head) for head in model.heads)


@pytest.mark.parametrize("wrapper", ["fmtl", "l_sam"])
def test_heads_run_once_at_theta_and_once_at_their_own_point(wrapper: str) -> None:
    runs = {}
    grads = {}
    for declare_heads in (True, False):
        model, step, x, targets = _problem(declare_heads, wrapper)
        record = step(functools.partial(model.task_losses, x, targets))
        assert record.forward_passes == 1 + K
        runs[declare_heads] = [head.runs for head in model.heads]
        grads[declare_heads] = [p.grad for p in model.parameters()]
    assert runs == {True: [2] * K, False: [1 + K] * K}
    for alone, whole in zip(grads[True], grads[False], strict=True):
        torch.testing.assert_close(alone, whole, rtol=0, atol=1e-12)
