"""ConFIG: the direction with equal cosine to every task gradient (Liu et al., 2024)."""

from __future__ import annotations

import torch
from torch import Tensor

from flatmtl.workers.mtl.aggregators._gram import as_output, nonzero_tasks, rank_tolerance, to_float64
from flatmtl.workers.mtl.base import GramAggregator
from flatmtl.workers.mtl.registry import register


def conflict_free_weights(matrix: Tensor, dtype: torch.dtype) -> Tensor:
    """Weights of ConFIG's update ``(sum_i <g_i, u>) u`` with ``u`` the unit vector along ``U^+ 1``.

    ``U`` stacks the unit gradients ``N G`` (``N = diag(1/||g_i||)``), so ``U^+ 1 = G^T N (N M N)^+ 1``:
    coefficients ``c = N (N M N)^+ 1`` over the gradients. Then ``<u_i, G^T c> = 1`` for every task when
    the gradients are independent (the least-squares best otherwise), ``||G^T c||^2 = c^T M c`` and the
    length is ``1^T M c / ||G^T c||``. Zero gradients get weight 0 (``N`` is 0 there).
    """
    num_tasks = matrix.shape[0]
    active = nonzero_tasks(matrix)
    if not active.any():
        return matrix.new_zeros(num_tasks)
    inverse_norms = torch.where(active, matrix.diagonal().clamp_min(0.0).rsqrt(), torch.zeros_like(matrix[0]))
    cosines = matrix * torch.outer(inverse_norms, inverse_norms)
    eigenvalues = torch.linalg.eigvalsh(cosines)
    pseudo_inverse = torch.linalg.pinv(cosines, atol=rank_tolerance(eigenvalues, dtype), hermitian=True)
    direction = inverse_norms * (pseudo_inverse @ torch.ones_like(inverse_norms))
    squared_length = float(direction @ matrix @ direction)
    if squared_length <= 0.0:
        return matrix.new_zeros(num_tasks)
    return direction * (float(matrix.sum(dim=0) @ direction) / squared_length)


@register(
    "aggregator",
    "config",
    description="Direction with equal cosine to every task gradient, scaled by the sum of the gradients' "
    "projections on it.",
    paper="Liu, Chu, Thuerey, ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks, ICLR 2025",
    scale="sum: the update's length is the sum of the task gradients' projections on its direction "
    "(K g for K identical gradients g)",
)
class ConFIG(GramAggregator):
    """ConFIG with equal task weights and the projection-length rule (the authors' defaults).

    Scale: sum convention, as in the authors' code: the length is the sum over tasks of each gradient's
    projection on the common direction, so it grows with K like the sum of the gradients.
    """

    def compute_weights(self, gram: Tensor, *, losses: Tensor | None, generator: torch.Generator | None) -> Tensor:
        return as_output(conflict_free_weights(to_float64(gram), gram.dtype), gram)
