"""Exact solver for the small convex quadratic programs behind MGDA, UPGrad and CAGrad.

The problems are K-dimensional with K the number of tasks, so a primal active-set method (Lawson and
Hanson's for the non-negative orthant, Wolfe's min-norm-point scheme for the simplex) finds the
optimum in a few linear solves, exactly up to rounding, where Frank-Wolfe would need many iterations
for a loose answer. Faces are solved by LU, singular ones by least squares, so singular (rank-deficient) Gram
matrices and repeated or zero gradients need no regularization.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flatmtl.workers.mtl.aggregators._gram import symmetric_lstsq

_ENTERING_TOLERANCE = 1e-13
"""A coordinate enters the support when its KKT violation exceeds this fraction of the data's scale."""

_KKT_TOLERANCE = 1e-12
"""A primal-dual active-set answer is kept when it violates no KKT condition by more than this fraction of the
data's scale; otherwise the one-coordinate-at-a-time method solves the problem."""

_ACTIVE_SET_ROUNDS = 10
"""Rounds of the primal-dual active-set iteration before it gives way (it settles in two or three on full-rank
problems)."""

_RCOND = 1e-20
"""Face systems are solved without truncating small singular values: a coordinate only enters when it is
affinely independent of the support, so near-singular faces are genuine (near-parallel gradients) and
truncating them would stall the method at a non-optimal point."""


def nonnegative_qp(Q: Tensor, q: Tensor, *, simplex: bool) -> Tensor:
    """``argmin 0.5 x^T Q x + q^T x`` over ``x >= 0``, and ``sum(x) == 1`` when ``simplex``.

    ``Q`` is a symmetric positive semi-definite float64 matrix and ``q`` must lie in its range (every
    caller has ``q = Q p``), which keeps every face problem bounded. When the minimizer is not unique
    (singular ``Q``) one of them is returned.
    """
    size = Q.shape[0]
    scale = max(float(Q.abs().max()), float(q.abs().max()), torch.finfo(Q.dtype).tiny)
    guessed = _primal_dual_active_set(Q, q, simplex, _KKT_TOLERANCE * scale)
    if guessed is not None:
        return guessed
    tolerance = _ENTERING_TOLERANCE * scale
    x = Q.new_zeros(size)
    support: list[int] = []
    if simplex:
        start = int(torch.argmin(0.5 * Q.diagonal() + q))
        x[start] = 1.0
        support = [start]
    for _ in range(3 * size + 10):
        gradient = Q @ x + q
        level = float(x @ gradient) if simplex else 0.0
        violation = gradient - level
        violation[support] = torch.inf
        entering = int(torch.argmin(violation))
        if not violation[entering] < -tolerance:
            break
        x, support = _descend_on_faces(Q, q, x, [*support, entering], simplex)
        if entering not in support:
            break  # the violation was rounding: the entering coordinate could not move
    if simplex:
        x = x.clamp_min(0.0)
        x = x / x.sum()
    return x


def _primal_dual_active_set(Q: Tensor, q: Tensor, simplex: bool, tolerance: float) -> Tensor | None:
    """The optimum by a primal-dual active-set iteration (each round one face solve, the free set then being
    the coordinates where ``x - multiplier > 0``), or None when it has not settled on a point that meets
    the KKT conditions within ``tolerance`` after a few rounds (a singular ``Q`` can make it cycle).
    Where it settles it is the exact face minimizer the one-coordinate-at-a-time method would end on, in
    two or three solves instead of one per coordinate that enters."""
    size = Q.shape[0]
    free = list(range(size)) if simplex else [i for i, value in enumerate(q.tolist()) if value < 0]
    for _ in range(_ACTIVE_SET_ROUNDS):
        if not free:
            if simplex:
                return None
            x = Q.new_zeros(size)
        else:
            x = _face_minimizer(Q, q, free, simplex)
        gradient = Q @ x + q
        multipliers = gradient - (float(x @ gradient) if simplex else 0.0)
        settled = free
        free = torch.nonzero(x - multipliers > 0).flatten().tolist()
        if free == settled:
            break
    else:
        return None
    if float(x.min()) < -tolerance or float(multipliers.min()) < -tolerance:
        return None
    if float((x * multipliers).abs().max()) > tolerance:
        return None
    x = x.clamp_min(0.0)
    return x / x.sum() if simplex else x


def _descend_on_faces(Q: Tensor, q: Tensor, x: Tensor, support: list[int], simplex: bool) -> tuple[Tensor, list[int]]:
    """Move from ``x`` to the minimizer on the face spanned by ``support``, dropping the coordinates that
    would turn negative on the way (each pass drops at least one, so this ends)."""
    while True:
        target = _face_minimizer(Q, q, support, simplex)
        now, then = x.tolist(), target.tolist()
        blocking = [i for i in support if then[i] <= 0.0]
        if not blocking:
            return target, support
        ratio, first = min((now[i] / (now[i] - then[i]), i) for i in blocking)
        x = x + ratio * (target - x)
        x[first] = 0.0
        support = [i for i, value in enumerate(x.tolist()) if i in support and value > 0.0]
        outside = torch.ones_like(x, dtype=torch.bool)
        outside[support] = False
        x[outside] = 0.0


def _face_minimizer(Q: Tensor, q: Tensor, support: list[int], simplex: bool) -> Tensor:
    """Unconstrained minimizer over the coordinates in ``support`` (others zero), with ``sum == 1`` when
    ``simplex``: the KKT system, solved by least squares so singular faces give a minimizer too."""
    index = torch.tensor(support)
    block = Q[index][:, index]
    rhs = -q[index]
    if simplex:
        n = len(support)
        bordered = Q.new_zeros(n + 1, n + 1)
        bordered[:n, :n] = block
        bordered[:n, n] = 1.0
        bordered[n, :n] = 1.0
        block = bordered
        rhs = torch.cat([rhs, rhs.new_ones(1)])
    solution = _solve_face(block, rhs.unsqueeze(1))[: len(support), 0]
    x = Q.new_zeros(Q.shape[0])
    x[index] = solution
    return x


def _solve_face(block: Tensor, rhs: Tensor) -> Tensor:
    """The face's KKT system by one LU factorization where it is non-singular, else by least squares through the
    eigendecomposition (an order of magnitude dearer, and needed only for singular faces)."""
    solution, info = torch.linalg.solve_ex(block, rhs)
    if int(info) == 0 and math.isfinite(float(solution.abs().sum())):
        return solution
    return symmetric_lstsq(block, rhs, _RCOND)
