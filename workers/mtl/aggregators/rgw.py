"""RGW: random gradient weighting (Lin et al., "Reasonable Effectiveness of Random Weighting: A Litmus
Test for Multi-Task Learning", TMLR 2022)."""

from __future__ import annotations

import torch
from torch import Tensor

from flatmtl.workers.mtl.base import GramAggregator
from flatmtl.workers.mtl.random_weights import DISTRIBUTIONS, sample_simplex_weights
from flatmtl.workers.mtl.registry import HParam, register


@register(
    "aggregator",
    "rgw",
    description="Random gradient weights on the simplex, drawn afresh each step (a litmus-test baseline).",
    paper="Lin et al. 2022, Reasonable Effectiveness of Random Weighting (TMLR)",
    scale="convex combination: weights sum to 1 with expectation 1/K each (the mean in expectation)",
    hparams=(
        HParam(
            "distribution",
            str,
            "normal",
            "weight distribution and its normalization, as in the paper (normal: N(0, I) then softmax)",
            choices=DISTRIBUTIONS,
        ),
    ),
)
class RandomGradientWeighting(GramAggregator):
    """Update = lambda @ G with lambda ~ the chosen distribution (see ``flatmtl.workers.mtl.random_weights``).

    The Gram matrix is not used: the weights depend only on the draw from ``generator`` (else the
    method's own generator, seeded 0 at construction), so every rank with the same seed agrees.
    """

    def __init__(self, distribution: str) -> None:
        self.distribution = distribution
        self._default_generator = torch.Generator().manual_seed(0)

    def compute_weights(self, gram: Tensor, *, losses: Tensor | None, generator: torch.Generator | None) -> Tensor:
        generator = generator if generator is not None else self._default_generator
        return sample_simplex_weights(self.distribution, gram.shape[0], generator, dtype=gram.dtype, device=gram.device)
