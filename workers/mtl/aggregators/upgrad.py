"""UPGrad: average of the task gradients projected onto the dual cone of the gradients (Quinton & Rey, 2024)."""

from __future__ import annotations

import torch
from torch import Tensor

from flatmtl.workers.mtl.aggregators._gram import (
    as_output,
    normalized,
    pair_entries,
    pair_output,
    rank_tolerance,
    to_float64,
)
from flatmtl.workers.mtl.aggregators._qp import nonnegative_qp
from flatmtl.workers.mtl.base import GramAggregator
from flatmtl.workers.mtl.registry import register

_ACTIVE_SET_ROUNDS = 10
"""Rounds of the batched active-set iteration before the projections it has not solved go one by one to
the exact active-set method (on full-rank Grams it settles in one to three rounds)."""

_KKT_TOLERANCE = 1e-12
"""On the normalized Gram, the largest violation of a projection's optimality conditions that is rounding."""


def dual_cone_projection_weights(matrix: Tensor) -> Tensor:
    """Row i: weights ``v`` with ``G^T v`` the projection of ``g_i`` onto the cone ``{x : G x >= 0}``.

    The projection's dual is ``min v^T M v`` over ``v >= e_i``; with ``v = e_i + u`` that is a
    non-negative QP in ``u`` with linear term ``M e_i``. All K are solved together by a primal-dual
    active-set iteration, each round one batched solve of the K face systems; its answers are checked
    against the optimality (KKT) conditions, and a projection that fails them (a singular Gram can make
    the iteration cycle) is solved exactly by the one-at-a-time active-set method.
    """
    scaled, scale = normalized(matrix)
    num_tasks = matrix.shape[0]
    identity = torch.eye(num_tasks, dtype=matrix.dtype)
    if scale == 0.0:
        return identity
    weights = identity + _batched_active_set(scaled, identity)
    for task in torch.nonzero(~_optimal(scaled, weights, identity)).flatten().tolist():
        weights[task] = identity[task] + nonnegative_qp(scaled, scaled[:, task], simplex=False)
    return weights


def dual_cone_projection_pair(a: float, b: float, c: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """The rows of ``dual_cone_projection_weights`` for two tasks in closed form (squared norms ``a``, ``b``,
    inner product ``c``).

    Without conflict (``c >= 0``) each gradient is in the cone and is its own projection. With one, the cone
    is ``{x : <x, g_1> >= 0, <x, g_2> >= 0}`` and ``g_1`` violates only the second constraint, so its projection
    is onto that half-space, ``g_1 - (c / b) g_2``, which keeps ``<., g_1> = a - c^2 / b >= 0``; likewise
    ``g_2 - (c / a) g_1``. A zero gradient constrains nothing (rounding can leave ``c < 0`` beside it).
    """
    if not (c < 0.0 and a > 0.0 and b > 0.0):
        return (1.0, 0.0), (0.0, 1.0)
    return (1.0, -c / b), (-c / a, 1.0)


def _batched_active_set(scaled: Tensor, identity: Tensor) -> Tensor:
    """Row i: ``u`` for projection i after the primal-dual active-set rounds (free where ``u - multiplier > 0``),
    starting with the tasks that conflict with task i free."""
    free = (scaled < 0) & ~identity.bool()
    for _ in range(_ACTIVE_SET_ROUNDS):
        u = _face_minimizers(scaled, free)
        multipliers = (identity + u) @ scaled
        settled = free
        free = u - multipliers > 0
        if torch.equal(free, settled):
            break
    return u


def _face_minimizers(scaled: Tensor, free: Tensor) -> Tensor:
    """Row i: the minimizer of ``0.5 u^T M u + M_i^T u`` with ``u`` zero off ``free[i]``, all K in one
    batched eigendecomposition (off the face the system is the identity with a zero right-hand side;
    a singular face gets its minimum-norm minimizer)."""
    mask = free.to(scaled.dtype)
    systems = mask[:, :, None] * scaled * mask[:, None, :] + torch.diag_embed(1.0 - mask)
    rhs = -(mask * scaled)  # row i: -M e_i on the face (M symmetric)
    eigenvalues, vectors = torch.linalg.eigh(systems)
    kept = eigenvalues.abs() > rank_tolerance(eigenvalues, torch.float64)
    inverse = torch.where(kept, 1.0 / torch.where(kept, eigenvalues, torch.ones_like(eigenvalues)), 0.0)
    projected = torch.einsum("bji,bj->bi", vectors, rhs)
    return mask * torch.einsum("bij,bj->bi", vectors, inverse * projected)


def _optimal(scaled: Tensor, weights: Tensor, identity: Tensor) -> Tensor:
    """[K] boolean: row i satisfies ``v >= e_i``, ``M v >= 0`` and ``(v - e_i) * M v = 0`` up to rounding."""
    slack = weights - identity
    products = weights @ scaled
    complementarity = (slack * products).abs().amax(dim=1)
    return (slack.amin(dim=1) >= 0) & (products.amin(dim=1) >= -_KKT_TOLERANCE) & (complementarity <= _KKT_TOLERANCE)


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
        if gram.shape[0] == 2:
            first, second = dual_cone_projection_pair(*pair_entries(gram))
            return pair_output(0.5 * (first[0] + second[0]), 0.5 * (first[1] + second[1]), gram)
        projections = dual_cone_projection_weights(to_float64(gram))
        return as_output(projections.mean(dim=0), gram)
