"""G-SAM: SAM with global information, one perturbation along the mean-loss gradient for every task.

One extra backward (of the mean weighted loss, over shared parameters and heads) gives the ascent
``rho * g / ||g||`` over all parameters; the per-task gradients are then taken at that single point and
aggregated as usual. This is the "global information" baseline of the SAMO paper, and SAMO with
``alpha = 1``.
"""

from __future__ import annotations

from flatmtl.workers.mtl.base import Wrapper
from flatmtl.workers.mtl.oracle import GradientOracle
from flatmtl.workers.mtl.registry import register
from flatmtl.workers.mtl.wrappers._perturbation import ADAPTIVE, ETA, RHO, Ascent


@register(
    "wrapper",
    "g_sam",
    description="Perturb all parameters along the mean-loss gradient, aggregate the task gradients there.",
    paper="Ban, Subramani, Ji 2025 (SAMO, Sec. 4.2: SAM with global information); Foret et al. 2021",
    scale="the aggregator's",
    hparams=(RHO, ADAPTIVE, ETA),
)
class GlobalSAM(Wrapper):
    def __init__(self, rho: float, adaptive: bool, eta: float) -> None:
        self.rho, self.adaptive, self.eta = rho, adaptive, eta

    def step(self, oracle: GradientOracle) -> None:
        ascent = Ascent(oracle, self.rho, self.adaptive, self.eta)
        shared, heads = oracle.mean_gradient(oracle.losses())
        offset_shared, offset_heads = ascent(shared, dict(enumerate(heads)))
        with oracle.perturbed(offset_shared, offset_heads):
            perturbed = oracle.task_gradients(oracle.losses())
        oracle.write(oracle.aggregate(perturbed.shared, perturbed.representation), perturbed.heads)
