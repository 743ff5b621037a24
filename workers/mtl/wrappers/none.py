"""The plain step: per-task gradients at the current parameters, aggregated."""

from __future__ import annotations

from flatmtl.workers.mtl.base import Wrapper
from flatmtl.workers.mtl.oracle import GradientOracle
from flatmtl.workers.mtl.registry import register


@register(
    "wrapper",
    "none",
    description="No perturbation: aggregate the per-task gradients at the current parameters.",
    paper="-",
    scale="the aggregator's",
)
class Plain(Wrapper):
    """One forward, one (batched) per-task backward; heads get their own task's gradient. An averaging
    aggregator (``mean``) needs no per-task gradients: one backward of the weighted sum, except on
    diagnostics steps; one defined on the shared representation (MGDA-UB, GradDrop) takes K backwards
    from the representation and one through the trunk."""

    def step(self, oracle: GradientOracle) -> None:
        if oracle.one_backward_suffices:
            oracle.weighted_sum_step()
            return
        weighted = oracle.losses()
        if oracle.aggregator.uses_representation and oracle.representation_step(weighted):
            return
        grads = oracle.task_gradients(weighted)
        oracle.write(oracle.aggregate(grads.shared, grads.representation), grads.heads)
