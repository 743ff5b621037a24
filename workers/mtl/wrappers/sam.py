"""SAM and ASAM around the whole multi-task update.

The ascent direction is the aggregated update itself (with each head's own gradient), so SAM
climbs along the direction the step would descend; the update is then the aggregation of the
per-task gradients at the perturbed parameters. ASAM scales the ascent by |theta| + eta per
coordinate, which makes the neighbourhood invariant to layer rescaling.
"""

from __future__ import annotations

import torch
from torch import Tensor

from workers.mtl.base import Wrapper
from workers.mtl.oracle import GradientOracle
from workers.mtl.registry import HParam, register

RHO = HParam("rho", float, 0.05, "perturbation radius (ASAM typically uses ~1-2)", low=0.0)
ADAPTIVE = HParam("adaptive", bool, False, "ASAM: scale the neighbourhood by |theta| + eta")
ETA = HParam("eta", float, 0.01, "ASAM's offset added to |theta|", low=0.0)


def ascent(
    oracle: GradientOracle, shared: Tensor, heads: list[Tensor], rho: float, adaptive: bool, eta: float
) -> tuple[Tensor, list[Tensor]]:
    """SAM's worst-case offsets for a joint (shared, heads) direction: rho * T^2 g / ||T g||."""
    shared_scale = oracle.shared.values().abs().add_(eta) if adaptive else None
    head_scales = [head.values().abs().add_(eta) if adaptive else None for head in oracle.heads]
    scaled_shared = shared if shared_scale is None else shared * shared_scale
    scaled_heads = [h if s is None else h * s for h, s in zip(heads, head_scales, strict=True)]
    squared = oracle.norm(scaled_shared).pow(2) + sum((h.pow(2).sum() for h in scaled_heads), torch.zeros(()))
    factor = rho / (squared.sqrt() + 1e-12)
    offset_shared = scaled_shared * factor if shared_scale is None else scaled_shared * shared_scale * factor
    offset_heads = [h * factor if s is None else h * s * factor for h, s in zip(scaled_heads, head_scales, strict=True)]
    return offset_shared, offset_heads


@register(
    "wrapper",
    "sam",
    description="SAM/ASAM on the aggregated update: ascend along it, aggregate again at the perturbed point.",
    paper="Foret et al. 2021 (SAM); Kwon et al. 2021 (ASAM)",
    scale="the aggregator's",
    hparams=(RHO, ADAPTIVE, ETA),
)
class SAM(Wrapper):
    def __init__(self, rho: float, adaptive: bool, eta: float) -> None:
        self.rho, self.adaptive, self.eta = rho, adaptive, eta

    def step(self, oracle: GradientOracle) -> None:
        grads = oracle.task_gradients(oracle.losses())
        direction = oracle.aggregate(grads.shared, grads.representation, commit=False)
        offset_shared, offset_heads = ascent(oracle, direction, grads.heads, self.rho, self.adaptive, self.eta)
        with oracle.perturbed(offset_shared, dict(enumerate(offset_heads))):
            perturbed = oracle.task_gradients(oracle.losses())
        oracle.write(oracle.aggregate(perturbed.shared, perturbed.representation), perturbed.heads)
