"""The two-objective toy problems the demo optimizes, with their Pareto sets.

Both are functions of a point x = (x1, x2) in the plane and are written for batches: ``objectives``
maps [..., 2] points to [..., 2] objective values, so the same code draws the contours and gives the
step its two losses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor

Bounds = tuple[tuple[float, float], tuple[float, float]]


@dataclass(frozen=True)
class ToyProblem:
    """A 2-D two-objective problem and how the demo optimizes it (Adam with a cosine-decayed rate).

    ``box`` is the feasible region: points are projected back onto it after every optimizer step.
    ``view`` is the plotted window. ``pareto_set`` returns a polyline [N, 2] through the Pareto set.
    """

    name: str
    title: str
    source: str
    objectives: Callable[[Tensor], Tensor]
    pareto_set: Callable[[], Tensor]
    starts: tuple[tuple[float, float], ...]
    view: Bounds
    box: Bounds | None
    lr: float
    rho: float


def samo_objectives(x: Tensor) -> Tensor:
    """SAMO's toy (Ban et al., Section 6.1): f1 = 1 - 1 / (1 + (x1^4 + x2^4) / 10) has a wide flat
    basin around the origin, f2 = 1 - exp(-2 (x1 + 4)^2 - 2 x2^2) a narrow well at (-4, 0)."""
    x1, x2 = x[..., 0], x[..., 1]
    f1 = 1 - 1 / (1 + (x1.pow(4) + x2.pow(4)) / 10)
    f2 = 1 - torch.exp(-2 * (x1 + 4).pow(2) - 2 * x2.pow(2))
    return torch.stack([f1, f2], dim=-1)


def samo_pareto_set() -> Tensor:
    """The segment x2 = 0, x1 in [-4, 0]: any x2 != 0 raises both objectives (both grow with x2^2 at
    fixed x1), and along x2 = 0 moving x1 from -4 towards 0 trades f2 for f1."""
    return torch.tensor([[-4.0, 0.0], [0.0, 0.0]], dtype=torch.float64)


LOG_FLOOR = 5e-6
"""Floor inside the logarithms of the CAGrad toy's upper half, which keeps its valley floors finite."""


def cagrad_objectives(x: Tensor) -> Tensor:
    """The CAGrad toy (Liu et al. 2021, "Conflict-Averse Gradient Descent", Appendix, and its public
    toy script; reused by Nash-MTL and FAMO), written from its formulas.

    For x2 > 0 each loss is a logarithmic valley, v1 along x1 = 2 tanh(x2) - 7 and v2 along
    x1 = 7 - 2 tanh(x2); for x2 < 0 each is a wide quadratic bowl, q1 centred at x1 = 7 and q2 at
    x1 = -7. ``tanh(x2 / 2)`` blends the halves, so both losses flatten towards x2 = 0:

        L_k = max(tanh(x2 / 2), 0) v_k + max(-tanh(x2 / 2), 0) q_k
        v_1 = log(max(|tanh(x2) - (x1 + 7) / 2|, 5e-6)) + 6
        v_2 = log(max(|(7 - x1) / 2 - tanh(x2)|, 5e-6)) + 6
        q_1 = ((x1 - 7)^2 + 0.1 (x2 + 8)^2) / 10 - 20
        q_2 = ((x1 + 7)^2 + 0.1 (x2 + 8)^2) / 10 - 20
    """
    x1, x2 = x[..., 0], x[..., 1]
    upper = torch.tanh(x2 / 2).clamp(min=0)
    lower = torch.tanh(-x2 / 2).clamp(min=0)
    v1 = (torch.tanh(x2) - (x1 + 7) / 2).abs().clamp(min=LOG_FLOOR).log() + 6
    v2 = ((7 - x1) / 2 - torch.tanh(x2)).abs().clamp(min=LOG_FLOOR).log() + 6
    bowl = 0.1 * (x2 + 8).pow(2)
    q1 = ((x1 - 7).pow(2) + bowl) / 10 - 20
    q2 = ((x1 + 7).pow(2) + bowl) / 10 - 20
    return torch.stack([upper * v1 + lower * q1, upper * v2 + lower * q2], dim=-1)


@cache
def cagrad_pareto_set(points: int = 141) -> Tensor:
    """The Pareto set of the CAGrad toy: one point per x1 in [-7, 7], all in the lower half.

    Below the axis both losses share the factor c(x2) = tanh(-x2 / 2), so the x1-parts of the two
    gradients, c (x1 - 7) / 5 and c (x1 + 7) / 5, cancel in ``w grad L1 + (1 - w) grad L2`` exactly
    when w = (x1 + 7) / 14. The point is Pareto-stationary where the x2-part of that same combination
    vanishes too; for each x1 that happens once, for x2 in (-12, -8), found here by bisection with the
    derivative taken by autograd. Cached: every run measures its distance to it (do not modify in place).
    """
    x1 = torch.linspace(-7.0, 7.0, points, dtype=torch.float64)
    weight = (x1 + 7) / 14

    def x2_slope(x2: Tensor) -> Tensor:
        x2 = x2.detach().requires_grad_(True)
        losses = cagrad_objectives(torch.stack([x1, x2], dim=-1))
        combined = weight * losses[:, 0] + (1 - weight) * losses[:, 1]
        return torch.autograd.grad(combined.sum(), x2)[0]

    low = torch.full_like(x1, -12.0)
    high = torch.full_like(x1, -8.0)
    for _ in range(60):
        middle = (low + high) / 2
        negative = x2_slope(middle) < 0
        low = torch.where(negative, middle, low)
        high = torch.where(negative, high, middle)
    return torch.stack([x1, (low + high) / 2], dim=-1)


PROBLEMS: dict[str, ToyProblem] = {
    "samo": ToyProblem(
        name="samo",
        title="SAMO toy: flat basin f1 vs narrow well f2",
        source="Ban et al., SAMO (joint global-local perturbation), Section 6.1 and Figure 1",
        objectives=samo_objectives,
        pareto_set=samo_pareto_set,
        starts=((-6.0, 1.0), (5.0, -2.5), (-1.0, 3.0)),
        view=((-6.5, 6.5), (-3.25, 3.25)),
        box=((-6.0, 6.0), (-3.0, 3.0)),
        lr=0.12,
        rho=0.3,
    ),
    "cagrad": ToyProblem(
        name="cagrad",
        title="CAGrad toy: two valleys above, two bowls below",
        source="Liu et al. 2021, CAGrad, toy example (also Nash-MTL, FAMO)",
        objectives=cagrad_objectives,
        pareto_set=cagrad_pareto_set,
        starts=((-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0)),
        view=((-10.0, 10.0), (-10.0, 10.0)),
        box=None,
        lr=0.5,
        rho=0.5,
    ),
}


def distance_to_polyline(point: Tensor, polyline: Tensor) -> float:
    """Euclidean distance from a [2] point to the nearest segment of an [N, 2] polyline."""
    starts, ends = polyline[:-1], polyline[1:]
    along = ends - starts
    length_sq = along.pow(2).sum(dim=-1).clamp(min=1e-300)
    t = ((point - starts) * along).sum(dim=-1).div(length_sq).clamp(0.0, 1.0)
    nearest = starts + t[:, None] * along
    return float((point - nearest).norm(dim=-1).min())
