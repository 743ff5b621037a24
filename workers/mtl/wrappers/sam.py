"""SAM and ASAM around the whole multi-task update.

The ascent direction is the aggregated update itself (with each head's own gradient), so SAM
climbs along the direction the step would descend; the update is then the aggregation of the
per-task gradients at the perturbed parameters. ASAM scales the ascent by |theta| + eta per
coordinate, which makes the neighbourhood invariant to layer rescaling.
"""

from __future__ import annotations

from torch import Tensor

from flatmtl.workers.mtl.base import Wrapper
from flatmtl.workers.mtl.oracle import GradientOracle
from flatmtl.workers.mtl.registry import register
from flatmtl.workers.mtl.wrappers._perturbation import ADAPTIVE, ETA, RHO, Ascent


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
        offset_shared, offset_heads = self._offsets(oracle)
        with oracle.perturbed(offset_shared, offset_heads):
            perturbed = oracle.task_gradients(oracle.losses())
        oracle.write(oracle.aggregate(perturbed.shared, perturbed.representation), perturbed.heads)

    def _offsets(self, oracle: GradientOracle) -> tuple[Tensor | None, dict[int, Tensor]]:
        """The ascent along the look-ahead update; the per-task gradients at theta are freed on return, so the
        step never holds them beside the perturbed ones."""
        ascent = Ascent(oracle, self.rho, self.adaptive, self.eta)
        grads = oracle.task_gradients(oracle.losses())
        direction = oracle.aggregate(grads.shared, grads.representation, commit=False)
        return ascent(direction, dict(enumerate(grads.heads)))
