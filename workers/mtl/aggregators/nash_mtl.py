"""Nash-MTL: the Nash bargaining solution of the tasks' improvements (Navon et al., 2022)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from workers.mtl.aggregators._gram import as_output, to_float64
from workers.mtl.aggregators._power_balance import power_balance
from workers.mtl.base import GramAggregator
from workers.mtl.registry import HParam, register


@register(
    "aggregator",
    "nash_mtl",
    description="Bargaining weights alpha > 0 with (G G^T) alpha = 1/alpha, solved by warm-started Newton.",
    paper="Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, Multi-Task Learning as a Bargaining "
    "Game, ICML 2022",
    scale="bargaining: alpha solves (M / ||M||_F) alpha = 1/alpha (authors' code; weights invariant to the "
    "gradients' scale, update scales like them); normalize_gram=false gives the paper's M alpha = 1/alpha, "
    "whose update has a norm independent of the gradients' scale",
    hparams=(
        HParam(
            "update_weights_every", int, 1, "recompute the weights every this many calls, reuse them between", low=1
        ),
        HParam("max_norm", float, 0.0, "clip the update's norm to this (0: no clipping)", low=0.0),
        HParam(
            "normalize_gram",
            bool,
            True,
            "solve with the Gram divided by its Frobenius norm, as the authors' code does",
        ),
    ),
)
class NashMTL(GramAggregator):
    """Weights ``alpha > 0`` with ``(M alpha)_i = 1 / alpha_i``: each task's directional improvement
    ``<g_i, d>`` is ``1 / alpha_i``, the Nash bargaining solution.

    The equation is solved exactly by Newton's method on the strictly convex potential
    ``0.5 a^T M a - sum log a_i``, warm-started from the previous step's weights (state), where the
    authors run a sequence of convex programs (CCCP); benchmarks/nash_mtl_solver.py compares the two.
    Scale: the authors' code normalizes the Gram by its Frobenius norm first, which makes the weights
    invariant to rescaling the gradients (the update scales with them, like a mean); that is the
    default. A tiny ridge (``_power_balance.RIDGE``) keeps the solution finite for zero or positively
    dependent gradients. ``max_norm > 0`` rescales the weights so ``||alpha @ G|| <= max_norm``, the
    authors' gradient clipping computed from the Gram.
    """

    state_keys: ClassVar[tuple[str, ...]] = ("previous_weights", "calls")

    def __init__(self, update_weights_every: int = 1, max_norm: float = 0.0, normalize_gram: bool = True) -> None:
        self.update_weights_every = update_weights_every
        self.max_norm = max_norm
        self.normalize_gram = normalize_gram
        self.previous_weights: Tensor | None = None
        self.calls = 0

    def compute_weights(self, gram: Tensor, *, losses: Tensor | None, generator: torch.Generator | None) -> Tensor:
        matrix = to_float64(gram)
        num_tasks = matrix.shape[0]
        previous = self.previous_weights
        if previous is not None and previous.numel() != num_tasks:
            previous = None
        reuse = previous is not None and self.calls % self.update_weights_every != 0
        self.calls += 1
        if reuse:
            assert previous is not None
            weights = previous
        elif float(matrix.diagonal().max()) <= 0.0:
            weights = torch.ones(num_tasks, dtype=torch.float64)
        else:
            problem = matrix / float(torch.linalg.matrix_norm(matrix)) if self.normalize_gram else matrix
            weights = power_balance(problem, 1.0, previous)
        self.previous_weights = weights
        return as_output(self._clipped(weights, matrix), gram)

    def _clipped(self, weights: Tensor, matrix: Tensor) -> Tensor:
        if self.max_norm <= 0.0:
            return weights
        norm = math.sqrt(max(float(weights @ matrix @ weights), 0.0))
        return weights * (self.max_norm / norm) if norm > self.max_norm else weights
