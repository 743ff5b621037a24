"""SI: the scale-invariant loss sum_i log L_i (a baseline in Navon et al., "Multi-Task Learning as a
Bargaining Game", ICML 2022, and in the F-MTL and SAMO papers): weights 1 / L_i."""

from __future__ import annotations

import torch
from torch import Tensor

from flatmtl.workers.mtl.base import LossWeighting
from flatmtl.workers.mtl.errors import MethodError
from flatmtl.workers.mtl.registry import register


def check_positive(method: str, losses: Tensor) -> list[float]:
    """Methods built on log L_i need every loss > 0. Returns the losses as host numbers, from the one read of
    them the check makes anyway, for weights computed on the host."""
    values = losses.tolist()
    if not all(value > 0 for value in values):  # NaN fails too
        raise MethodError(f"{method}: losses must be > 0 (it takes their logarithm), got {values}")
    return values


@register(
    "weighting",
    "si",
    description="Sum of log losses: each task's gradient divided by its loss, so loss scales cancel.",
    paper="Navon et al. 2022, Multi-Task Learning as a Bargaining Game (ICML), SI baseline",
    scale="sum: weighted losses log L_i, effective weights 1 / L_i",
)
class ScaleInvariant(LossWeighting):
    """Weighted loss log L_i, whose gradient is grad L_i / L_i.

    ``begin_step`` fixes the anchor L0 = the step's unperturbed losses; ``weigh`` returns
    log L0 + (L - L0) / L0, which equals log L at the anchor and has gradient grad L / L0 everywhere, so
    perturbed passes (SAM wrappers) use the step's weights 1 / L0 as the contract requires. Without an
    anchor (standalone use), the current losses are the anchor and this is exactly log L.
    """

    def __init__(self) -> None:
        self.anchor: Tensor | None = None

    def begin_step(self, losses: Tensor, generator: torch.Generator | None = None) -> None:
        check_positive(self.method_name, losses)
        self.anchor = losses.detach().clone()

    def weigh(self, losses: Tensor) -> Tensor:
        anchor = self.anchor
        if anchor is None:  # a step's anchor was checked when it was set
            anchor = losses.detach()
            check_positive(self.method_name, anchor)
        anchor = anchor.to(losses.dtype)
        return anchor.log() + (losses - anchor) / anchor

    def step_weights(self, losses: Tensor) -> Tensor:
        """1 / L0, the gradient of ``weigh`` in L."""
        anchor = self.anchor
        if anchor is None:
            anchor = losses.detach()
            check_positive(self.method_name, anchor)
        return anchor.to(losses.dtype).reciprocal()
