"""Nash-MTL: the Nash bargaining solution of the tasks' improvements (Navon et al., 2022)."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from flatmtl.workers.mtl.aggregators._gram import as_output
from flatmtl.workers.mtl.aggregators._power_balance import RIDGE
from flatmtl.workers.mtl.base import GramAggregator
from flatmtl.workers.mtl.registry import HParam, register

DECREMENT_TOLERANCE = 1e-5
"""Newton stops after a full step taken at a Newton decrement at or below this. Self-concordance bounds
the decrement after that step by ``(d / (1 - d))^2`` and every weight's relative error by about the same,
1e-10 here, so no further K x K solve is spent confirming it."""

QUADRATIC_REGION = 0.25
"""At or below this decrement full Newton steps keep the weights positive and converge quadratically
(Nesterov, 2004); above it the step length comes from a backtracking (Armijo) line search on the potential."""

MAX_ITERATIONS = 100


@register(
    "aggregator",
    "nash_mtl",
    description="Bargaining weights alpha > 0 with (G G^T) alpha = 1/alpha, solved by warm-started Newton.",
    paper="Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, Multi-Task Learning as a Bargaining "
    "Game, ICML 2022",
    scale="bargaining: alpha solves (M / ||M||_F) alpha = 1/alpha by default (weights invariant to the gradients' "
    "scale, update scales like them); normalize_gram=false gives the paper's and the authors' code's "
    "M alpha = 1/alpha, the same direction with a norm independent of the gradients' scale",
    hparams=(
        HParam(
            "update_weights_every", int, 1, "recompute the weights every this many calls, reuse them between", low=1
        ),
        HParam("max_norm", float, 0.0, "clip the update's norm to this (0: no clipping)", low=0.0),
        HParam(
            "normalize_gram",
            bool,
            True,
            "solve with the Gram divided by its Frobenius norm: weights invariant to the gradients' scale",
        ),
    ),
)
class NashMTL(GramAggregator):
    """Weights ``alpha > 0`` with ``(M alpha)_i = 1 / alpha_i``: each task's directional improvement
    ``<g_i, d>`` is ``1 / alpha_i``, the Nash bargaining solution.

    The authors run a sequence of convex programs (CCCP) through cvxpy; here the equation is solved
    exactly by Newton's method on the strictly convex potential ``0.5 a^T M a - sum log a_i`` in
    float64 numpy, warm-started from the previous step's weights (state); two tasks have a closed
    form. benchmarks/nash_mtl_solver.py compares the two solvers.
    Scale: by default the Gram is divided by its Frobenius norm first, which makes the weights
    invariant to rescaling the gradients (the update scales with them, like a mean). The authors' code
    divides by that norm too, but only for conditioning: it multiplies its constraints back, so its
    weights solve the raw equation, ``normalize_gram=False`` here (ours times ``||M||_F^(-1/2)``).
    A tiny ridge (``_power_balance.RIDGE``, shared with FairGrad) keeps the solution finite for zero
    or positively dependent gradients. ``max_norm > 0`` rescales the weights so
    ``||alpha @ G|| <= max_norm``, the authors' gradient clipping computed from the Gram.
    """

    state_keys: ClassVar[tuple[str, ...]] = ("previous_weights", "calls")
    host_state_keys: ClassVar[tuple[str, ...]] = ("previous_weights",)

    def __init__(self, update_weights_every: int = 1, max_norm: float = 0.0, normalize_gram: bool = True) -> None:
        self.update_weights_every = update_weights_every
        self.max_norm = max_norm
        self.normalize_gram = normalize_gram
        self.previous_weights: Tensor | None = None
        self.calls = 0

    def compute_weights(self, gram: Tensor, *, losses: Tensor | None, generator: torch.Generator | None) -> Tensor:
        matrix = gram.detach().to(device="cpu", dtype=torch.float64).numpy()
        matrix = 0.5 * (matrix + matrix.T)  # shard sums can break symmetry by rounding
        num_tasks = matrix.shape[0]
        previous = self.previous_weights
        if previous is not None and previous.numel() != num_tasks:
            previous = None
        reuse = previous is not None and self.calls % self.update_weights_every != 0
        self.calls += 1
        if reuse:
            assert previous is not None
            weights = previous.detach().to(device="cpu", dtype=torch.float64).numpy()
        elif float(matrix.diagonal().max()) <= 0.0:
            weights = np.ones(num_tasks)
        else:
            problem = matrix / float(np.linalg.norm(matrix)) if self.normalize_gram else matrix
            start = None if previous is None else previous.detach().to(device="cpu", dtype=torch.float64).numpy()
            weights = bargaining_weights(problem, start)
        self.previous_weights = torch.from_numpy(weights)
        return as_output(torch.from_numpy(self._clipped(weights, matrix)), gram)

    def _clipped(self, weights: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        if self.max_norm <= 0.0:
            return weights
        norm = math.sqrt(max(float(weights @ matrix @ weights), 0.0))
        return weights * (self.max_norm / norm) if norm > self.max_norm else weights


def bargaining_weights(matrix: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """The ``w > 0`` with ``((M + ridge I) w)_i = 1 / w_i``; ``matrix`` is symmetric PSD, float64, not zero.

    The solution satisfies ``w^T M w = K`` (sum the equations times ``w_i``), so any positive start is
    first rescaled onto that surface. Cold, the start is the solution for orthogonal gradients,
    ``w_i = M_ii^(-1/2)``; rescaled, it is already the solution for K <= 2:
    ``w_i = 1 / (|g_i| sqrt(1 + cos(g_1, g_2)))``. Warm, it is the previous step's weights.
    Newton's step for the potential ``0.5 w^T M w - sum log w_i`` (self-concordant) costs one K x K
    solve, and numpy, not torch, because at this size the per-operation overhead is the cost.
    """
    num_tasks = matrix.shape[0]
    ridged = matrix.copy()
    ridged.reshape(-1)[:: num_tasks + 1] += RIDGE * float(matrix.diagonal().max())
    diagonal = ridged.diagonal().copy()
    w = diagonal ** (-0.5) if num_tasks <= 2 or start is None or not bool((start > 0.0).all()) else start
    w = w * math.sqrt(num_tasks / float(w @ ridged @ w))
    if num_tasks <= 2:
        return w
    hessian = ridged.copy()
    hessian_diagonal = hessian.reshape(-1)[:: num_tasks + 1]
    previous = math.inf
    for _ in range(MAX_ITERATIONS):
        inverse = 1.0 / w
        improvements = ridged @ w
        gradient = improvements - inverse
        np.add(diagonal, inverse * inverse, out=hessian_diagonal)
        step = np.linalg.solve(hessian, -gradient)
        decrement_squared = max(-float(gradient @ step), 0.0)
        decrement = math.sqrt(decrement_squared)
        if decrement > QUADRATIC_REGION:
            w = w + _line_search(w, step, improvements, ridged @ step, decrement_squared) * step
            continue
        if decrement >= previous:
            break  # the rounding floor of an ill-conditioned Gram: exact steps would have shrunk it
        w = w + step
        if decrement <= DECREMENT_TOLERANCE:
            break
        previous = decrement
    return w


def _line_search(
    w: np.ndarray, step: np.ndarray, improvements: np.ndarray, step_image: np.ndarray, decrement_squared: float
) -> float:
    """Largest ``t`` in 1, 1/2, 1/4, ... with ``w + t step > 0`` and the potential's Armijo decrease
    ``f(w + t step) <= f(w) - t decrement^2 / 4``; ``improvements = M w``, ``step_image = M step``.
    ``f(w + t s) - f(w) = t s.Mw + t^2 s.Ms / 2 - sum log(1 + t s_i / w_i)`` costs O(K) per trial."""
    linear = float(step @ improvements)
    quadratic = 0.5 * float(step @ step_image)
    relative = step / w
    t = 1.0
    while True:
        moved = 1.0 + t * relative
        if bool((moved > 0.0).all()):
            change = t * linear + t * t * quadratic - float(np.log(moved).sum())
            if change <= -0.25 * t * decrement_squared or t < 1e-12:
                return t
        t *= 0.5
