"""IMTL-G: the update with equal projections onto every unit task gradient (Liu et al., 2021)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flatmtl.workers.mtl.aggregators._gram import (
    as_output,
    nonzero_tasks,
    normalized,
    pair_entries,
    pair_output,
    to_float64,
    zero_gradient,
)
from flatmtl.workers.mtl.base import GramAggregator
from flatmtl.workers.mtl.registry import register


def impartial_weights(matrix: Tensor) -> Tensor:
    """Weights ``a`` with ``sum(a) = 1`` and ``<G^T a, g_i / ||g_i||>`` equal for every task.

    With ``N = diag(1 / ||g_i||)`` that is ``N M a = t 1``, ``1^T a = 1``: a bordered linear system in
    ``(a, t)``, solved by least squares so rank-deficient Grams give the least-squares answer. This is
    the paper's closed form ``a_{2:K} = g_1 U^T (D U^T)^{-1}`` written through the Gram. Zero gradients
    have no direction to be impartial to: they get weight 0 and the others share the sum of 1.
    """
    num_tasks = matrix.shape[0]
    active = nonzero_tasks(matrix)
    scaled, scale = normalized(matrix)
    if scale == 0.0:
        return matrix.new_full((num_tasks,), 1.0 / num_tasks)
    index = active.nonzero().flatten()
    n = index.numel()
    block = scaled[index][:, index]
    system = scaled.new_zeros(n + 1, n + 1)
    system[:n, :n] = block / block.diagonal().sqrt().unsqueeze(1)
    system[:n, n] = -1.0
    system[n, :n] = 1.0
    rhs = scaled.new_zeros(n + 1, 1)
    rhs[n, 0] = 1.0
    solution = torch.linalg.lstsq(system, rhs, driver="gelsd").solution[:n, 0]
    weights = matrix.new_zeros(num_tasks)
    weights[index] = solution
    return weights


def impartial_pair(a: float, b: float) -> tuple[float, float]:
    """IMTL-G's weights for two tasks with squared gradient norms ``a`` and ``b``: ``(|g_2|, |g_1|) / (|g_1| + |g_2|)``.

    Equal projections onto ``u_1`` and ``u_2`` ask ``a_1 |g_1| p = a_2 |g_2| p`` with ``p = |g_1| |g_2| - <g_1, g_2>``,
    so the update is along the bisector ``u_1 + u_2`` whatever the angle; parallel gradients (``p = 0``) are
    impartial to any weights and get the same ones, the limit of the non-parallel case. A zero gradient gets
    weight 0 (see ``impartial_weights``).
    """
    largest = max(a, b)
    if largest <= 0.0:
        return 0.5, 0.5
    if zero_gradient(a, largest) or zero_gradient(b, largest):
        return (0.0, 1.0) if zero_gradient(a, largest) else (1.0, 0.0)
    first, second = math.sqrt(a), math.sqrt(b)
    return second / (first + second), first / (first + second)


@register(
    "aggregator",
    "imtl_g",
    description="Closed-form weights summing to 1 so the update projects equally onto every unit task gradient.",
    paper="Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, Towards Impartial Multi-task Learning, ICLR 2021",
    scale="affine: weights sum to 1 (the paper's constraint; they may be negative), so identical gradients give "
    "that gradient",
)
class IMTLG(GramAggregator):
    """IMTL-G's gradient balancing: ``d = G^T a`` with ``sum(a) = 1`` and equal ``<d, u_i>``.

    Scale: weights sum to 1 as in the paper (the update has the magnitude of one task gradient).
    """

    def compute_weights(self, gram: Tensor, *, losses: Tensor | None, generator: torch.Generator | None) -> Tensor:
        if gram.shape[0] == 2:
            a, b, _ = pair_entries(gram)
            return pair_output(*impartial_pair(a, b), gram)
        return as_output(impartial_weights(to_float64(gram)), gram)
