"""MGDA: the min-norm point of the convex hull of the task gradients (Sener & Koltun, 2018)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flatmtl.workers.mtl.aggregators._gram import (
    as_output,
    normalized,
    pair_entries,
    pair_output,
    to_float64,
    zero_gradient,
)
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


def min_norm_pair(a: float, b: float, c: float) -> float:
    """Weight of the first of two vectors (squared norms ``a``, ``b``, inner product ``c``) at the min-norm point
    of the segment between them: the simplex QP's closed form for two tasks.

    ``|w g_1 + (1 - w) g_2|^2`` is a parabola in ``w`` with its minimum at ``(b - c) / |g_1 - g_2|^2``, clipped to
    ``[0, 1]``. Equal vectors (``|g_1 - g_2|^2`` zero) make every point of the segment the same one: 1/2 each.
    """
    gap = a + b - 2.0 * c
    if not gap > 0.0:
        return 0.5
    return min(max((b - c) / gap, 0.0), 1.0)


def gradient_divisors(
    method: str, squared_norms: list[float], losses: Tensor | None, normalization: str
) -> list[float]:
    """Per-task divisors ``s_i`` of the normalized gradients ``g_i / s_i``, from the Gram's diagonal.

    A zero gradient keeps divisor 1 for its norm factor: it stays the zero vector, which makes the
    min-norm point zero (the tasks are Pareto-stationary), as it should. K numbers: Python floats.
    """
    if normalization == "none":
        return [1.0] * len(squared_norms)
    largest = max(squared_norms)
    norms = [1.0 if zero_gradient(value, largest) else math.sqrt(value) for value in squared_norms]
    if normalization == "l2":
        return norms
    assert losses is not None
    values = losses.detach().to(device="cpu", dtype=torch.float64).tolist()
    if not all(value > 0 for value in values):
        raise MethodError(
            f"{method}: normalization={normalization!r} divides by the losses, got {values}; "
            "allowed: losses > 0 (or normalization none/l2)"
        )
    return values if normalization == "loss" else [value * norm for value, norm in zip(values, norms, strict=True)]


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
        if gram.shape[0] == 2:
            a, b, c = pair_entries(gram)
            first, second = gradient_divisors(self.method_name, [a, b], losses, self.normalization)
            weight = min_norm_pair(a / first**2, b / second**2, c / (first * second))
            return pair_output(weight / first, (1.0 - weight) / second, gram)
        matrix = to_float64(gram)
        divisors = matrix.new_tensor(
            gradient_divisors(self.method_name, matrix.diagonal().tolist(), losses, self.normalization)
        )
        weights = min_norm_weights(matrix / torch.outer(divisors, divisors))
        return as_output(weights / divisors, gram)
