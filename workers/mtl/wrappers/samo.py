"""SAMO: per-task perturbations that mix the mean-loss gradient with a forward-only local estimate.

One backward of the mean weighted loss gives the global gradient ``g0``. For each task, SPSA estimates
the task's own gradient from two forward passes along a Gaussian direction ``z`` (paper eq. 3)::

    g_i_hat = (l_i(theta + mu z) - l_i(theta - mu z)) / (2 mu) * z

rescaled per layer to ``g0``'s layer norms (eq. 4; ``normalization="global"`` uses one factor
``||g0|| / ||g_i_hat||`` and ``"none"`` keeps the raw estimate, the paper's ablations). Task i is then
perturbed by ``rho * v_i / ||v_i||`` with ``v_i = alpha g0 + (1 - alpha) g_i_hat`` (eq. 1) and its
gradient there is its SAMO gradient (eq. 2); the K SAMO gradients are aggregated. The extra cost is one
backward and ``2 K`` forwards without graph, instead of F-MTL's K extra per-task backwards.

Heads: SPSA directions cover the shared parameters only (as in the authors' code). Heads are perturbed
along ``g0``'s head part, which for head i points along task i's own head gradient (only task i's loss
reaches head i), so the global and local head directions coincide; the norm of ``v_i`` is taken over
all parameters as in eq. 1. With ``alpha = 1`` this is exactly G-SAM. (The authors' code normalizes
the shared and head parts separately, each to ``rho``.) Each head gets its own task's SAMO gradient.
The SPSA forwards run the closure as given; the authors switch to eval mode for them. Running
statistics are restored after the step either way. Aggregators that weigh by the shared representation's
gradients (MGDA-UB) get the SAMO gradients themselves: K different points share no representation.

Defaults are the authors': ``rho=1e-3``, ``alpha=0.5`` (their code's ``beta`` is ``1 - alpha``), ``mu=0.01``,
one direction per task. ``shared_directions`` reuses the same directions for every task, so one pair of
forwards per direction serves all K tasks (2 instead of 2 K forwards per direction): cheaper for many
tasks, but the local estimates of different tasks are then correlated, unlike the paper's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from workers.mtl.base import Wrapper
from workers.mtl.oracle import Displacement, GradientOracle
from workers.mtl.registry import HParam, register
from workers.mtl.wrappers._perturbation import TINY, head_sq_norm

NORMALIZATIONS = ("layerwise", "global", "none")


def spsa_draw(oracle: GradientOracle, move: Displacement, mu: float) -> tuple[Tensor, Tensor]:
    """One Gaussian direction z over the shared parameters and, for every task k, the central difference
    ``(l_k(theta + mu z) - l_k(theta - mu z)) / (2 mu)``: two forwards without graph. Leaves the
    parameters at ``theta - mu z``; the caller's next move (or the end of its block) puts them back."""
    direction = oracle.random_direction()
    move(direction * mu)
    plus = oracle.forward_losses()
    move(direction * -mu)
    minus = oracle.forward_losses()
    return direction, (plus - minus) / (2 * mu)


@register(
    "wrapper",
    "samo",
    description="Joint global-local perturbation per task; local gradients estimated by forward-only SPSA.",
    paper="Ban, Subramani, Ji 2025, SAMO: A Lightweight Sharpness-Aware Approach for Multi-Task Optimization",
    scale="the aggregator's",
    hparams=(
        HParam("rho", float, 1e-3, "perturbation radius (QM9 in the paper: 1e-5)", low=0.0),
        HParam("alpha", float, 0.5, "weight of the global (mean-loss) gradient in the perturbation", low=0.0, high=1.0),
        HParam("mu", float, 0.01, "SPSA step along the random direction", low=0.0, low_open=True),
        HParam("directions", int, 1, "SPSA directions per task, averaged", low=1),
        HParam("normalization", str, "layerwise", "rescaling of the local estimate to g0", choices=NORMALIZATIONS),
        HParam("shared_directions", bool, False, "one set of SPSA directions for all tasks (2 forwards each)"),
    ),
)
class SAMO(Wrapper):
    def __init__(
        self, rho: float, alpha: float, mu: float, directions: int, normalization: str, shared_directions: bool
    ) -> None:
        self.rho, self.alpha, self.mu, self.directions = rho, alpha, mu, directions
        self.normalization, self.shared_directions = normalization, shared_directions

    def step(self, oracle: GradientOracle) -> None:
        weighted = oracle.losses()
        if self.rho == 0:
            grads = oracle.task_gradients(weighted)
            oracle.write(oracle.aggregate(grads.shared, grads.representation), grads.heads)
            return
        g0, g0_heads = oracle.mean_gradient(weighted)
        heads_squared = head_sq_norm(g0_heads)
        reference = self._reference(oracle, g0)
        template = oracle.shared.params[0]
        sam_shared = torch.empty(oracle.num_tasks, oracle.shared.numel, dtype=template.dtype, device=template.device)
        sam_heads = []
        local = self.alpha < 1
        global_part = self.alpha * g0
        with oracle.displaced() as move:
            shared_draws = self._draws(oracle, move) if local and self.shared_directions else None
            for task in range(oracle.num_tasks):
                direction = g0
                if local:
                    draws = shared_draws if shared_draws is not None else self._draws(oracle, move)
                    estimate = sum(z * c[task] for z, c in draws) / self.directions
                    direction = global_part + (1 - self.alpha) * self._normalized(oracle, estimate, reference)
                factor = self.rho / ((oracle.norm(direction).pow(2) + heads_squared).sqrt() + TINY)
                move(direction * factor, {task: g0_heads[task] * factor})
                sam_shared[task], head = oracle.task_gradient(oracle.losses(), task)
                sam_heads.append(head)
        oracle.write(oracle.aggregate(sam_shared), sam_heads)

    def _draws(self, oracle: GradientOracle, move: Displacement) -> list[tuple[Tensor, Tensor]]:
        return [spsa_draw(oracle, move, self.mu) for _ in range(self.directions)]

    def _reference(self, oracle: GradientOracle, g0: Tensor) -> Tensor | None:
        """g0's magnitude the local estimates are rescaled to: per layer, overall, or none."""
        if self.normalization == "layerwise":
            return oracle.layer_norms(g0)
        if self.normalization == "global":
            return oracle.norm(g0)
        return None

    def _normalized(self, oracle: GradientOracle, estimate: Tensor, reference: Tensor | None) -> Tensor:
        if reference is None:
            return estimate
        if self.normalization == "global":
            return estimate * _ratio(reference, oracle.norm(estimate))
        return estimate * oracle.shared.expand_layers(_ratio(reference, oracle.layer_norms(estimate)))


def _ratio(target: Tensor, current: Tensor) -> Tensor:
    """target / current where current > 0, else 0 (a zero estimate stays zero)."""
    positive = current > 0
    return torch.where(positive, target / torch.where(positive, current, torch.ones_like(current)), 0.0)
