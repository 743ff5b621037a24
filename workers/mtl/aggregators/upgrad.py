"""UPGrad: average of the task gradients projected onto the dual cone of the gradients (Quinton & Rey, 2024)."""

from __future__ import annotations

import torch
from torch import Tensor

from flatmtl.workers.mtl.aggregators._gram import as_output, normalized, to_float64
from flatmtl.workers.mtl.aggregators._qp import nonnegative_qp
from flatmtl.workers.mtl.base import GramAggregator
from flatmtl.workers.mtl.registry import register


def dual_cone_projection_weights(matrix: Tensor) -> Tensor:
    """Row i: weights ``v`` with ``G^T v`` the projection of ``g_i`` onto the cone ``{x : G x >= 0}``.

    The projection's dual is ``min v^T M v`` over ``v >= e_i``; with ``v = e_i + u`` that is a
    non-negative QP in ``u`` with linear term ``M e_i``, solved exactly.
    """
    scaled, scale = normalized(matrix)
    num_tasks = matrix.shape[0]
    identity = torch.eye(num_tasks, dtype=matrix.dtype)
    if scale == 0.0:
        return identity
    return torch.stack([identity[i] + nonnegative_qp(scaled, scaled[:, i], simplex=False) for i in range(num_tasks)])


@register(
    "aggregator",
    "upgrad",
    description="Mean of each task gradient projected onto the dual cone of all task gradients (non-conflicting).",
    paper="Quinton & Rey, Jacobian Descent for Multi-Objective Optimization, 2024 (torchjd's UPGrad)",
    scale="mean: weights 1/K when no two gradients conflict (the projections are then the gradients themselves)",
)
class UPGrad(GramAggregator):
    """Projects every ``g_i`` onto ``{x : G x >= 0}`` and averages: ``G d >= 0`` so no task's loss rises
    to first order.

    Scale: mean of the projections (torchjd's default preference vector 1/K), so without conflict this
    is the mean gradient. Each projection is solved exactly on the (possibly singular) Gram; torchjd
    instead regularizes the Gram for its QP solver.
    """

    def compute_weights(self, gram: Tensor, *, losses: Tensor | None, generator: torch.Generator | None) -> Tensor:
        projections = dual_cone_projection_weights(to_float64(gram))
        return as_output(projections.mean(dim=0), gram)
