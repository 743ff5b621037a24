"""MGDA-UB: MGDA on the gradients w.r.t. the shared representation (Sener & Koltun, 2018)."""

from __future__ import annotations

from typing import ClassVar

from flatmtl.workers.mtl.aggregators.mgda import MGDA, NORMALIZATION, SCALE
from flatmtl.workers.mtl.registry import register


@register(
    "aggregator",
    "mgda_ub",
    description="MGDA's weights from the Gram of the gradients w.r.t. the shared representation (one backward).",
    paper="Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization, NeurIPS 2018 (MGDA-UB)",
    scale=SCALE,
    hparams=(NORMALIZATION,),
)
class MGDAUpperBound(MGDA):
    """MGDA solved on the representation's Gram, applied to the shared-parameter gradients.

    The step's oracle passes the Gram of the per-task gradients w.r.t. the shared representation
    (summed over the batch), the cheap upper bound of the paper; the weights then combine the shared
    parameters' gradients. Called directly on a plain [K, P] matrix (no representation available) it
    is exactly MGDA on that matrix. Scale as MGDA: a convex combination of the normalized gradients.
    """

    uses_representation: ClassVar[bool] = True
