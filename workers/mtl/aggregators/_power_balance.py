"""Newton's method for the positive solution of ``(M w)_i = w_i^(-p)``: Nash-MTL (p = 1) and FairGrad.

The equation is the stationarity condition of the strictly convex potential
``0.5 w^T M w + sum_i psi(w_i)`` with ``psi'(w) = -w^(-p)`` (``-log w`` for p = 1), so Newton's step is a
descent direction for the squared residual; damping it until that falls (keeping ``w > 0``)
converges from a positive start, quadratically near the solution: a handful of K x K solves
instead of a sequence of conic programs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flatmtl.workers.mtl.aggregators._gram import symmetric_lstsq

RIDGE = 1e-12
"""Added to the Gram's diagonal (relative to its largest entry) so the solution exists when gradients are
zero or positively dependent, where the unregularized potential is unbounded below."""

_RESIDUAL_TOLERANCE = 1e-10
"""Converged when every ``|(M w)_i - w_i^(-p)|`` is below this fraction of ``w_i^(-p)``."""

_MAX_ITERATIONS = 100


def power_balance(matrix: Tensor, exponent: float, start: Tensor | None = None) -> Tensor:
    """The ``w > 0`` with ``((M + ridge I) w)_i = w_i^(-exponent)``; ``matrix`` is float64 PSD and not zero.

    ``start`` (positive, e.g. the previous step's answer) warm-starts Newton; otherwise it starts
    from the solution for orthogonal gradients, ``w_i = M_ii^(-1 / (1 + exponent))``; either is first
    rescaled onto ``sum_i w_i (M w)_i = sum_i w_i^(1 - exponent)``, which the solution satisfies.
    Every iteration costs one K x K solve and a few vector operations: the residual computed to test
    a step is the next iteration's, so an undamped step (the usual case) evaluates nothing twice.
    """
    eye = torch.eye(matrix.shape[0], dtype=matrix.dtype)
    ridged = matrix + RIDGE * float(matrix.diagonal().max()) * eye
    if start is None or not bool((start > 0).all()):
        start = ridged.diagonal().pow(-1.0 / (1.0 + exponent))
    # The solution has sum_i w_i (M w)_i = sum_i w_i^(1-p): rescale the start onto that surface.
    ratio = float(start.pow(1.0 - exponent).sum()) / float(start @ ridged @ start)
    w = start * ratio ** (1.0 / (1.0 + exponent))
    power = w.pow(-exponent)
    residual = ridged @ w - power
    merit = float(residual @ residual)
    for _ in range(_MAX_ITERATIONS):
        if float((residual / power).abs().max()) <= _RESIDUAL_TOLERANCE:
            break
        step = _newton_step(ridged, eye, w, power, residual, exponent)
        shrink = float((-step / w).max())  # w + t step > 0 needs t < 1 / shrink
        t = 1.0 if shrink < 0.95 else 0.95 / shrink
        while True:
            candidate = w + t * step
            candidate_power = candidate.pow(-exponent)
            candidate_residual = ridged @ candidate - candidate_power
            candidate_merit = float(candidate_residual @ candidate_residual)
            if candidate_merit < merit or t < 1e-12:
                break
            t *= 0.5
        if candidate_merit >= merit:
            break  # the rounding floor of an ill-conditioned Gram
        w, power, residual, merit = candidate, candidate_power, candidate_residual, candidate_merit
    return w


def _newton_step(matrix: Tensor, eye: Tensor, w: Tensor, power: Tensor, residual: Tensor, exponent: float) -> Tensor:
    """Solve ``(M + diag(p w^(-p-1))) step = -residual`` (symmetric positive definite).

    LU with partial pivoting, not Cholesky: it is backward stable here too, and torch's CPU Cholesky
    carries a large fixed cost per call that dominates at K x K. ``solve_ex`` reports a singular matrix
    in ``info`` instead of checking and raising, which saves a synchronising check per solve.
    """
    hessian = torch.addcmul(matrix, eye, (exponent * power / w).unsqueeze(0))
    step, info = torch.linalg.solve_ex(hessian, -residual)
    if int(info) != 0:  # positive definite in theory; rounding can break that
        return symmetric_lstsq(hessian, -residual.unsqueeze(1), 1e-15)[:, 0]
    return step
