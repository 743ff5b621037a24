"""FairGrad: alpha-fair task weights (Ban & Ji, 2024)."""

from __future__ import annotations

import torch
from torch import Tensor

from flatmtl.workers.mtl.aggregators._gram import as_output, to_float64
from flatmtl.workers.mtl.aggregators._power_balance import power_balance
from flatmtl.workers.mtl.base import GramAggregator
from flatmtl.workers.mtl.registry import HParam, register


@register(
    "aggregator",
    "fairgrad",
    description="Alpha-fair weights w > 0 with (G G^T w)_i = w_i^(-1/alpha), solved by Newton.",
    paper="Ban & Ji, Fair Resource Allocation in Multi-Task Learning, ICML 2024",
    scale="fairness condition on the raw Gram (authors' code): scaling the gradients by s scales the update by "
    "s^((1-alpha)/(1+alpha)); alpha=1 is Nash-MTL's M w = 1/w",
    hparams=(
        HParam(
            "alpha",
            float,
            1.0,
            "fairness: 1 is proportional fairness, larger is closer to max-min",
            low=0.0,
            low_open=True,
        ),
    ),
)
class FairGrad(GramAggregator):
    """Weights solving ``(M w)_i = w_i^(-1/alpha)``: each task's improvement ``<g_i, d>`` is its
    alpha-fair marginal utility.

    Solved exactly by Newton's method on the strictly convex potential
    ``0.5 w^T M w - sum phi(w_i)``, ``phi'(w) = w^(-1/alpha)``. Scale: the raw Gram as in the
    authors' code (no normalization), so for ``alpha = 1`` this equals ``nash_mtl`` with
    ``normalize_gram=false``.
    """

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = alpha

    def compute_weights(self, gram: Tensor, *, losses: Tensor | None, generator: torch.Generator | None) -> Tensor:
        matrix = to_float64(gram)
        if float(matrix.diagonal().max()) <= 0.0:
            return as_output(torch.ones(matrix.shape[0], dtype=torch.float64), gram)
        return as_output(power_balance(matrix, 1.0 / self.alpha), gram)
