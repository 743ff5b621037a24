"""L-SAM: SAM with local information, one perturbation per task along that task's own gradient.

Task i is perturbed by ``rho * (g_i, h_i) / ||(g_i, h_i)||`` (its shared gradient and its head's,
normalized jointly); its gradient at that point is its SAM gradient. The K SAM gradients of the
shared parameters are aggregated, and each head gets its own task's SAM gradient. Costs K forwards and
K single-task backwards on top of the plain step. The "local information" baseline of the SAMO paper.
Aggregators that weigh by the shared representation's gradients (MGDA-UB) get the SAM gradients
themselves: K different points share no representation. ``rho = 0`` is the plain step.
"""

from __future__ import annotations

from torch import Tensor

from flatmtl.workers.mtl.base import Wrapper
from flatmtl.workers.mtl.oracle import GradientOracle
from flatmtl.workers.mtl.registry import register
from flatmtl.workers.mtl.wrappers._perturbation import ADAPTIVE, ETA, RHO, Ascent, task_point_gradients


@register(
    "wrapper",
    "l_sam",
    description="Per-task SAM: each task's gradient at its own worst-case point, then aggregated.",
    paper="Ban, Subramani, Ji 2025 (SAMO, Sec. 4.2: SAM with local information)",
    scale="the aggregator's",
    hparams=(RHO, ADAPTIVE, ETA),
)
class LocalSAM(Wrapper):
    def __init__(self, rho: float, adaptive: bool, eta: float) -> None:
        self.rho, self.adaptive, self.eta = rho, adaptive, eta

    def step(self, oracle: GradientOracle) -> None:
        ascent = Ascent(oracle, self.rho, self.adaptive, self.eta)
        grads = oracle.task_gradients(oracle.losses())
        if self.rho == 0:
            oracle.write(oracle.aggregate(grads.shared, grads.representation), grads.heads)
            return

        def offsets(task: int) -> tuple[Tensor | None, Tensor | None]:
            shared, heads = ascent(grads.shared[task], {task: grads.heads[task]})
            return shared, heads[task]

        def store(task: int, sam: Tensor) -> None:  # task i's row served its offset: it takes its SAM gradient
            grads.shared[task] = sam

        heads = task_point_gradients(oracle, offsets, store)
        oracle.write(oracle.aggregate(grads.shared), heads)
