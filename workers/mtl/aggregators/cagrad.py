"""CAGrad: the update in a ball around the mean gradient that most improves the worst task (Liu et al., 2021)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flatmtl.workers.mtl.aggregators._gram import as_output, normalized, symmetric_lstsq, to_float64
from flatmtl.workers.mtl.aggregators._qp import nonnegative_qp
from flatmtl.workers.mtl.base import GramAggregator
from flatmtl.workers.mtl.registry import HParam, register

RESCALINGS = {"1+c^2": lambda c: 1.0 + c * c, "1+c": lambda c: 1.0 + c, "none": lambda c: 1.0}

_STATIONARY = 1e-7
"""Below this fraction of the largest gradient norm the optimal dual point counts as zero."""


def conflict_averse_weights(matrix: Tensor, c: float) -> Tensor:
    """Weights of ``d = argmax_d min_i <g_i, d>`` subject to ``||d - g0|| <= c ||g0||`` (``g0`` the mean).

    The dual is ``min_w b^T w + r ||G^T w||`` over the simplex, ``b = M 1/K``, ``r = c ||g0||``. Writing
    ``r ||x|| = min_l (r/2)(||x||^2 / l + l)`` turns it into simplex QPs ``min 0.5 w^T M w + t b^T w``
    (``t = l / r``) whose optimal ``l`` solves ``||G^T w(t)|| = r t``, a monotone 1-D equation. On the
    support of ``w(t)`` the QP's solution is affine in ``t``, so the root there is a quadratic's root:
    bisect until that exact root passes the KKT check. Then ``d = g0 + G^T w / t``.
    """
    scaled, scale = normalized(matrix)
    num_tasks = matrix.shape[0]
    mean = matrix.new_full((num_tasks,), 1.0 / num_tasks)
    if scale == 0.0 or c == 0.0:
        return mean
    b = scaled @ mean
    mean_norm = math.sqrt(max(float(mean @ b), 0.0))
    if mean_norm <= _STATIONARY:
        return mean
    radius = c * mean_norm
    min_norm = nonnegative_qp(scaled, torch.zeros_like(b), simplex=True)
    if _norm(scaled, min_norm) <= _STATIONARY:
        # Pareto-stationary: no d beats min_i <g_i, d> = 0; the projection of g0 onto {d : G d >= 0}
        # reaches it whenever it lies in the ball (else the optimum is negative and found below).
        offset = nonnegative_qp(scaled, b, simplex=False)
        if _norm(scaled, offset) <= radius * (1.0 + 1e-9):
            return mean + offset
    solution = _dual_solution(scaled, b, radius, min_norm)
    if solution is None:
        return mean + nonnegative_qp(scaled, b, simplex=False)
    weights, t = solution
    return mean + weights / t


def _dual_solution(M: Tensor, b: Tensor, radius: float, min_norm: Tensor) -> tuple[Tensor, float] | None:
    """``(w, t)`` at the root of ``||G^T w(t)|| = radius t``, or None when the root is ``t = 0``.

    ``w(0)`` is the min-norm point ``min_norm``, so ``t0 = ||G^T w(0)|| / radius`` has ``rho(t0) >= 1``
    for the non-increasing ``rho(t) = ||G^T w(t)|| / (radius t)``: the search starts there. Norms
    computed from a Gram carry an absolute error of about sqrt(eps) of the largest gradient norm, so
    roots with ``radius t`` below ``_STATIONARY`` are not resolvable and count as ``t = 0``.
    """
    floor = _STATIONARY / radius
    low, high = max(_norm(M, min_norm) / radius, floor), 1.0 / radius  # gradient norms are at most 1 here
    t = low
    weights = min_norm
    for _ in range(100):
        weights = nonnegative_qp(M, t * b, simplex=True)
        exact, proposal = _root_on_support(M, b, radius, weights > 0.0, floor)
        if exact is not None:
            return exact
        norm = _norm(M, weights)
        if abs(norm - radius * t) <= 1e-11 * radius * t:  # also ends flat pieces, where every t is a root
            return weights, t
        if norm > radius * t:
            low = t
        else:
            high = t
        if high <= floor:
            return None
        t = proposal if proposal is not None and low < proposal < high else math.sqrt(low * high)
    return weights, t


def _norm(M: Tensor, weights: Tensor) -> float:
    return math.sqrt(max(float(weights @ M @ weights), 0.0))


def _root_on_support(
    M: Tensor, b: Tensor, radius: float, support: Tensor, floor: float
) -> tuple[tuple[Tensor, float] | None, float | None]:
    """The exact root when the optimal support is ``support``, if it is: there ``w(t) = w_a + t w_c``
    from the face's KKT system, ``||G^T w(t)||^2 = (radius t)^2`` is a quadratic in ``t``, and a root
    above ``floor`` is accepted when ``w`` is feasible and satisfies the QP's KKT conditions.

    Returns ``(solution, None)`` when accepted, else ``(None, proposal)``: the smallest root above the
    floor, a good next point for the outer search (Newton's step on this piece)."""
    index = support.nonzero().flatten()
    n = index.numel()
    bordered = M.new_zeros(n + 1, n + 1)
    bordered[:n, :n] = M[index][:, index]
    bordered[:n, n] = 1.0
    bordered[n, :n] = 1.0
    rhs = M.new_zeros(n + 1, 2)
    rhs[n, 0] = 1.0
    rhs[:n, 1] = -b[index]
    solution = symmetric_lstsq(bordered, rhs, 1e-20)[:n]
    base, slope = M.new_zeros(M.shape[0]), M.new_zeros(M.shape[0])
    base[index], slope[index] = solution[:, 0], solution[:, 1]
    quadratic = float(slope @ M @ slope) - radius**2
    linear = float(base @ M @ slope)
    constant = float(base @ M @ base)
    roots = [t for t in _positive_roots(quadratic, linear, constant) if t >= floor]
    for t in roots:
        weights = base + t * slope
        if float(weights.min()) < -1e-12:
            continue
        weights = weights.clamp_min(0.0)
        weights = weights / weights.sum()
        gradient = M @ weights + t * b
        tolerance = 1e-11 * max(1.0, t * float(b.abs().max()))
        if float((gradient - weights @ gradient).min()) >= -tolerance:
            return (weights, t), None
    return None, roots[0] if roots else None


def _positive_roots(a: float, half_b: float, c: float) -> list[float]:
    """Positive roots of ``a t^2 + 2 half_b t + c``, computed without cancellation."""
    if abs(a) <= 1e-14 * max(abs(half_b), abs(c), 1.0):
        return [-c / (2.0 * half_b)] if half_b < 0.0 and c > 0.0 else []
    discriminant = half_b * half_b - a * c
    if discriminant < 0.0:
        return []
    q = -(half_b + math.copysign(math.sqrt(discriminant), half_b))
    roots = [q / a] + ([c / q] if q != 0.0 else [])
    return sorted(t for t in roots if t > 0.0)


@register(
    "aggregator",
    "cagrad",
    description="Conflict-averse gradient: maximize the worst task's improvement in a ball around the mean gradient.",
    paper="Liu, Liu, Jin, Stone & Liu, Conflict-Averse Gradient Descent for Multi-task Learning, NeurIPS 2021",
    scale="mean-based: d = g0 + (c ||g0|| / ||g_w||) g_w with g0 the mean gradient, divided by `rescale` "
    "(default 1+c^2, the authors' default), so c=0 gives the mean gradient",
    hparams=(
        HParam("c", float, 0.4, "radius of the ball around the mean gradient, relative to its norm", low=0.0),
        HParam(
            "rescale",
            str,
            "1+c^2",
            "divide the update by 1+c^2 (authors' default), 1+c, or not at all",
            choices=tuple(RESCALINGS),
        ),
    ),
)
class CAGrad(GramAggregator):
    """Solves ``max_d min_i <g_i, d>`` s.t. ``||d - g0|| <= c ||g0||`` exactly through its K-dim dual.

    Scale: built on the mean gradient ``g0`` (mean convention), then divided by ``1 + c^2`` as the
    authors' code does by default, so the update keeps the mean gradient's magnitude for any ``c``
    and ``c = 0`` gives the mean. ``rescale="none"`` returns the constrained solution ``d`` itself.
    """

    def __init__(self, c: float = 0.4, rescale: str = "1+c^2") -> None:
        self.c = c
        self.rescale = rescale

    def compute_weights(self, gram: Tensor, *, losses: Tensor | None, generator: torch.Generator | None) -> Tensor:
        weights = conflict_averse_weights(to_float64(gram), self.c)
        return as_output(weights / RESCALINGS[self.rescale](self.c), gram)
