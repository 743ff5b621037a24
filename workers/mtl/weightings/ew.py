"""Equal loss weighting: the losses pass through unchanged."""

from __future__ import annotations

import torch
from torch import Tensor

from flatmtl.workers.mtl.base import LossWeighting
from flatmtl.workers.mtl.registry import register


@register(
    "weighting",
    "ew",
    description="Every loss with weight 1 (leave balancing to the aggregator).",
    paper="-",
    scale="sum: weights 1 (the aggregator decides sum or mean)",
)
class EqualWeighting(LossWeighting):
    """Weight 1 per loss; combined with the ``mean`` aggregator this is the mean-loss gradient."""

    def __init__(self) -> None:
        self._ones: Tensor | None = None
        """The step weights, kept while the losses keep their shape, dtype and device (nothing writes them)."""

    def weigh(self, losses: Tensor) -> Tensor:
        return losses

    def step_weights(self, losses: Tensor) -> Tensor:
        self._ones = ones_like_kept(self._ones, losses)
        return self._ones


def ones_like_kept(kept: Tensor | None, losses: Tensor) -> Tensor:
    """``kept`` where it is ones like ``losses`` already, else new ones: weights 1 for a step, made once."""
    if kept is None or kept.shape != losses.shape or kept.dtype != losses.dtype or kept.device != losses.device:
        return torch.ones_like(losses, memory_format=torch.contiguous_format)
    return kept
