"""Equal loss weighting: the losses pass through unchanged."""

from __future__ import annotations

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

    def weigh(self, losses: Tensor) -> Tensor:
        return losses
