"""RLW: random loss weighting (Lin et al., "Reasonable Effectiveness of Random Weighting: A Litmus Test
for Multi-Task Learning", TMLR 2022)."""

from __future__ import annotations

import torch
from torch import Tensor

from flatmtl.workers.mtl.base import LossWeighting
from flatmtl.workers.mtl.checks import check_num_tasks
from flatmtl.workers.mtl.errors import MethodError
from flatmtl.workers.mtl.random_weights import DISTRIBUTIONS, sample_simplex_weights
from flatmtl.workers.mtl.registry import HParam, register


@register(
    "weighting",
    "rlw",
    description="Random loss weights on the simplex, drawn afresh each step (a litmus-test baseline).",
    paper="Lin et al. 2022, Reasonable Effectiveness of Random Weighting (TMLR)",
    scale="convex combination: weights sum to 1 with expectation 1/K each, as in the paper",
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
class RandomLossWeighting(LossWeighting):
    """Weighted loss lambda_i L_i with lambda drawn once per step in ``begin_step`` (see
    ``flatmtl.workers.mtl.random_weights``) from ``generator`` (else the method's own, seeded 0 at
    construction), so perturbed passes reuse the step's weights and every rank draws the same.
    """

    def __init__(self, distribution: str) -> None:
        self.distribution = distribution
        self.weights: Tensor | None = None
        self._default_generator = torch.Generator().manual_seed(0)

    def begin_step(self, losses: Tensor, generator: torch.Generator | None = None) -> None:
        generator = generator if generator is not None else self._default_generator
        self.weights = sample_simplex_weights(
            self.distribution, losses.shape[0], generator, dtype=losses.dtype, device=losses.device
        )

    def weigh(self, losses: Tensor) -> Tensor:
        return self.step_weights(losses) * losses

    def step_weights(self, losses: Tensor) -> Tensor:
        if self.weights is None:
            raise MethodError(f"{self.method_name}: no weights drawn yet; call begin_step(losses, generator) first")
        check_num_tasks(self.method_name, self.weights.shape[0], losses.shape[0])
        return self.weights.to(device=losses.device, dtype=losses.dtype)
