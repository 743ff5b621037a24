"""IMTL-L: the loss-balancing half of Impartial Multi-Task Learning (Liu et al., ICLR 2021)."""

from __future__ import annotations

import torch
from torch import Tensor

from flatmtl.workers.mtl.registry import register
from flatmtl.workers.mtl.weightings.uw import LearnedLogScales


@register(
    "weighting",
    "imtl_l",
    description="Learned scales exp(s_i) with regularizer -s_i, driving every scaled loss towards 1.",
    paper="Liu et al. 2021, Towards Impartial Multi-task Learning (ICLR)",
    scale="sum: weights exp(s_i), 1 at the start; the optimum weight is 1 / L_i (scaled losses equal 1)",
)
class ImpartialLossWeighting(LearnedLogScales):
    """Weighted loss exp(s_i) L_i - s_i with s learned by the user's optimizer (s's gradient is
    exp(s_i) L_i - 1, zero when the scaled loss is 1)."""

    def scale(self, log_scales: Tensor, losses: Tensor) -> Tensor:
        return torch.exp(log_scales) * losses - log_scales

    def factors(self, log_scales: Tensor) -> Tensor:
        return torch.exp(log_scales)

    def learnable_grads(self, losses: Tensor, weights: Tensor) -> list[Tensor]:
        """exp(s_i) L_i - 1."""
        return [(weights * losses - 1).to(self.log_scales.dtype)]
