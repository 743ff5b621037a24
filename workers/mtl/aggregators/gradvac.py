"""GradVac (Wang et al., "Gradient Vaccine: Investigating and Improving Multi-task Optimization in
Massively Multilingual Models", ICLR 2021), as K x K algebra over the whole shared parameters."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from flatmtl.workers.mtl.aggregators.pcgrad import random_order
from flatmtl.workers.mtl.base import GramAggregator
from flatmtl.workers.mtl.checks import check_num_tasks
from flatmtl.workers.mtl.registry import HParam, register

PARALLEL_TOLERANCE = 1e-6
"""A target cosine with sqrt(1 - target^2) below this asks for an exactly parallel gradient, which no
finite correction reaches; such pairs are left uncorrected (their target still follows the EMA)."""


@register(
    "aggregator",
    "gradvac",
    description="Raise each pair's gradient cosine to an EMA target of past cosines (PCGrad when targets are 0).",
    paper="Wang et al. 2021, Gradient Vaccine (ICLR)",
    scale="sum: the corrected gradients are summed, as in the paper",
    hparams=(HParam("beta", float, 0.01, "EMA rate of the per-pair target cosines", low=0.0, high=1.0, low_open=True),),
)
class GradVac(GramAggregator):
    """Update = sum_i g_i' with g_i' corrected towards every other task j in a random order.

    With phi = cos(g_i', g_j) and target t_ij: if phi < t_ij, g_i' += |g_i'| (t sqrt(1-phi^2) -
    phi sqrt(1-t^2)) / (|g_j| sqrt(1-t^2)) g_j, which makes cos(g_i', g_j) = t_ij exactly; then
    t_ij <- (1 - beta) t_ij + beta phi (phi measured before the correction). Targets start at 0 and
    are state. The paper's per-layer granularity is not used: cosines are over all shared parameters,
    which is what lets the method run from the Gram matrix (coefficients over the original rows).
    Pairs where either gradient is zero have no cosine and are skipped. The order of the other tasks
    is drawn per task and step from ``generator`` (else the method's own, seeded 0 at construction).
    """

    state_keys: ClassVar[tuple[str, ...]] = ("targets",)
    host_state_keys: ClassVar[tuple[str, ...]] = ("targets",)

    def __init__(self, beta: float) -> None:
        self.beta = beta
        self.targets: Tensor | None = None
        self._default_generator = torch.Generator().manual_seed(0)

    def coefficients(self, gram: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The corrected gradients as C [K, K] over the original rows; updates the targets."""
        generator = generator if generator is not None else self._default_generator
        gram = gram.detach().to("cpu", torch.float64)
        num_tasks = gram.shape[0]
        if self.targets is None:
            self.targets = torch.zeros(num_tasks, num_tasks, dtype=torch.float64)
        check_num_tasks(self.method_name, self.targets.shape[0], num_tasks)
        coefficients = torch.eye(num_tasks, dtype=torch.float64)
        for i in range(num_tasks):
            for j in random_order([j for j in range(num_tasks) if j != i], generator):
                norm_i = math.sqrt(max(float(coefficients[i] @ gram @ coefficients[i]), 0.0))
                norm_j = math.sqrt(max(float(gram[j, j]), 0.0))
                if norm_i == 0.0 or norm_j == 0.0:
                    continue
                cosine = min(max(float(coefficients[i] @ gram[:, j]) / (norm_i * norm_j), -1.0), 1.0)
                target = float(self.targets[i, j])
                sine_target = math.sqrt(max(1.0 - target * target, 0.0))
                if cosine < target and sine_target >= PARALLEL_TOLERANCE:
                    sine = math.sqrt(max(1.0 - cosine * cosine, 0.0))
                    coefficients[i, j] += norm_i * (target * sine - cosine * sine_target) / (norm_j * sine_target)
                self.targets[i, j] = (1.0 - self.beta) * target + self.beta * cosine
        return coefficients

    def compute_weights(self, gram: Tensor, *, losses: Tensor | None, generator: torch.Generator | None) -> Tensor:
        return self.coefficients(gram, generator).sum(dim=0).to(device=gram.device, dtype=gram.dtype)
