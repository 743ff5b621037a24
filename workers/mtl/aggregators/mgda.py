"""MGDA: the min-norm point of the convex hull of the task gradients (Sener & Koltun, 2018)."""

from __future__ import annotations

import torch
from torch import Tensor

from flatmtl.workers.mtl.aggregators._gram import as_output, nonzero_tasks, normalized, to_float64
from flatmtl.workers.mtl.aggregators._qp import nonnegative_qp
from flatmtl.workers.mtl.base import GramAggregator
from flatmtl.workers.mtl.errors import MethodError
from flatmtl.workers.mtl.registry import HParam, register

NORMALIZATIONS = ("none", "l2", "loss", "loss+")

NORMALIZATION = HParam(
    "normalization",
    str,
    "none",
    "gradient normalization before the min-norm problem: none, l2 (g/||g||), loss (g/L), loss+ (g/(L ||g||))",
    choices=NORMALIZATIONS,
)

SCALE = (
    "convex: weights of the normalized gradients sum to 1 (the update is the min-norm point of their hull); "
    "returned weights apply to the original gradients, so they sum to 1 only for normalization=none"
)


def min_norm_weights(matrix: Tensor) -> Tensor:
    """Simplex weights of the min-norm point of the hull of the vectors whose float64 Gram is ``matrix``."""
    scaled, scale = normalized(matrix)
    num_tasks = matrix.shape[0]
    if scale == 0.0:
        return matrix.new_full((num_tasks,), 1.0 / num_tasks)
    return nonnegative_qp(scaled, scaled.new_zeros(num_tasks), simplex=True)


def gradient_divisors(method: str, matrix: Tensor, losses: Tensor | None, normalization: str) -> Tensor:
    """Per-task divisors ``s_i`` of the normalized gradients ``g_i / s_i``.

    A zero gradient keeps divisor 1 for its norm factor: it stays the zero vector, which makes the
    min-norm point zero (the tasks are Pareto-stationary), as it should.
    """
    norms = matrix.diagonal().clamp_min(0.0).sqrt()
    norms = torch.where(nonzero_tasks(matrix), norms, torch.ones_like(norms))
    if normalization == "none":
        return torch.ones_like(norms)
    if normalization == "l2":
        return norms
    assert losses is not None
    values = losses.detach().to(device="cpu", dtype=torch.float64)
    if not (values > 0).all():
        raise MethodError(
            f"{method}: normalization={normalization!r} divides by the losses, got {values.tolist()}; "
            "allowed: losses > 0 (or normalization none/l2)"
        )
    return values if normalization == "loss" else values * norms


@register(
    "aggregator",
    "mgda",
    description="Min-norm point of the convex hull of the (optionally normalized) task gradients, solved exactly.",
    paper="Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization, NeurIPS 2018",
    scale=SCALE,
    hparams=(NORMALIZATION,),
)
class MGDA(GramAggregator):
    """Min-norm element of the convex hull of the normalized gradients ``g_i / s_i``.

    Scale: a convex combination, as in the paper (weights of the normalized gradients sum to 1), so
    the update is never longer than the longest normalized gradient. The normalization is folded into
    the returned weights ``w_i / s_i`` over the original gradients. The simplex QP is solved exactly
    by an active-set method (see ``_qp``), so its KKT conditions hold to rounding, including for
    rank-deficient Gram matrices and zero gradients.
    """

    def __init__(self, normalization: str = "none") -> None:
        self.normalization = normalization
        self.needs_losses = normalization in ("loss", "loss+")

    def compute_weights(self, gram: Tensor, *, losses: Tensor | None, generator: torch.Generator | None) -> Tensor:
        matrix = to_float64(gram)
        divisors = gradient_divisors(self.method_name, matrix, losses, self.normalization)
        weights = min_norm_weights(matrix / torch.outer(divisors, divisors))
        return as_output(weights / divisors, gram)
