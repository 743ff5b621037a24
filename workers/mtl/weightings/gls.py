"""GLS: geometric loss strategy (Chennupati et al., "MultiNet++", CVPR-W 2019), the geometric mean of
the task losses."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flatmtl.workers.mtl.base import LossWeighting, on_device_of
from flatmtl.workers.mtl.checks import check_num_tasks
from flatmtl.workers.mtl.registry import register
from flatmtl.workers.mtl.weightings.si import check_positive


def geometric_weights(losses: list[float]) -> list[float]:
    """w_i = (prod L)^(1/K) / (K L_i): sum_i w_i grad L_i = grad (prod L)^(1/K). K numbers: computed on the host,
    where each costs no kernel call."""
    num_tasks = len(losses)
    geometric_mean = math.exp(math.fsum(map(math.log, losses)) / num_tasks)
    return [geometric_mean / (num_tasks * loss) for loss in losses]


@register(
    "weighting",
    "gls",
    description="Geometric mean of the losses: detached weights whose weighted gradients sum to its gradient.",
    paper="Chennupati et al. 2019, MultiNet++: Multi-Stream Feature Aggregation and Geometric Loss Strategy (CVPR-W)",
    scale="sum: the weighted gradients sum to the gradient of (prod L_i)^(1/K) (each weighted loss is G / K)",
)
class GeometricLossStrategy(LossWeighting):
    """Weights w_i = G / (K L_i) with G = (prod_i L_i)^(1/K), detached and fixed by ``begin_step`` from
    the step's unperturbed losses (standalone: from the current losses), so perturbed passes reuse them.
    A ``mean`` aggregator divides the geometric-mean gradient by K; a summing one gives it exactly.
    """

    def __init__(self) -> None:
        self.weights: Tensor | None = None

    def begin_step(self, losses: Tensor, generator: torch.Generator | None = None) -> None:
        self.weights = self._weights(losses.detach())

    def weigh(self, losses: Tensor) -> Tensor:
        return self.step_weights(losses) * losses

    def step_weights(self, losses: Tensor) -> Tensor:
        weights = self.weights
        if weights is None:
            weights = self._weights(losses.detach())
        check_num_tasks(self.method_name, weights.shape[0], losses.shape[0])
        return weights.to(device=losses.device, dtype=losses.dtype)

    def _weights(self, losses: Tensor) -> Tensor:
        values = check_positive(self.method_name, losses)
        return on_device_of(torch.tensor(geometric_weights(values), dtype=losses.dtype), losses)
