"""SAMO: per-task perturbations that mix the mean-loss gradient with a forward-only local estimate.

One backward of the mean weighted loss gives the global gradient ``g0``. For each task, SPSA estimates
the task's own gradient from two forward passes along a Gaussian direction ``z`` (paper eq. 3)::

    g_i_hat = (l_i(theta + mu z) - l_i(theta - mu z)) / (2 mu) * z

rescaled per layer to ``g0``'s layer norms (eq. 4; ``normalization="global"`` uses one factor
``||g0|| / ||g_i_hat||`` and ``"none"`` keeps the raw estimate, the paper's ablations). Task i is then
perturbed by ``rho * v_i / ||v_i||`` with ``v_i = alpha g0 + (1 - alpha) g_i_hat`` (eq. 1) and its
gradient there is its SAMO gradient (eq. 2); the K SAMO gradients are aggregated. The extra cost is one
backward and ``2 K`` forwards without graph, instead of F-MTL's K extra per-task backwards; the forwards
run as vmapped forwards over chunks of the 2 K points where the model allows (``flatmtl.workers.mtl.probes``).

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

from flatmtl.workers.mtl.base import Wrapper
from flatmtl.workers.mtl.oracle import Displacement, GradientOracle
from flatmtl.workers.mtl.probes import MAX_PROBE_ELEMENTS
from flatmtl.workers.mtl.registry import HParam, register
from flatmtl.workers.mtl.wrappers._perturbation import TINY, head_sq_norm

NORMALIZATIONS = ("layerwise", "global", "none")


def central_differences(oracle: GradientOracle, move: Displacement, directions: Tensor, mu: float) -> Tensor:
    """For each Gaussian direction z (rows of ``directions`` [D, P] over the shared parameters) and every
    task k, ``(l_k(theta + mu z) - l_k(theta - mu z)) / (2 mu)``: [D, K] from 2 D forwards without graph,
    batched into vmapped forwards where the model allows. Leaves the parameters at theta."""
    plus = oracle.probe_losses(move, directions, mu)
    minus = oracle.probe_losses(move, directions, -mu)
    return (plus - minus) / (2 * mu)


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
        sam_shared = torch.empty(oracle.num_tasks, oracle.shared.numel, dtype=g0.dtype, device=g0.device)
        sam_heads = []
        local = self.alpha < 1
        global_part = self.alpha * g0
        with oracle.displaced() as move:
            if local:
                # Row i holds task i's local estimate until its SAMO gradient replaces it.
                self._local_estimates(oracle, move, out=sam_shared)
            for task in range(oracle.num_tasks):
                direction = g0
                if local:
                    direction = global_part + (1 - self.alpha) * self._normalized(oracle, sam_shared[task], reference)
                factor = self.rho / ((oracle.norm(direction).pow(2) + heads_squared).sqrt() + TINY)
                move(direction * factor, {task: g0_heads[task] * factor})
                sam_shared[task], head = oracle.task_gradient_alone(task)
                sam_heads.append(head)
        oracle.write(oracle.aggregate(sam_shared), sam_heads)

    def _local_estimates(self, oracle: GradientOracle, move: Displacement, out: Tensor) -> None:
        """Every task's SPSA estimate (eq. 3, averaged over its directions) into the rows of ``out``.

        Directions are drawn task by task in order, so the draws do not depend on how the probes are
        batched; tasks are probed in chunks that keep the offsets within the probes' memory bound."""
        draws, numel = self.directions, oracle.shared.numel
        if self.shared_directions:
            directions = torch.stack([oracle.random_direction() for _ in range(draws)])
            coefficients = central_differences(oracle, move, directions, self.mu)
            torch.matmul(coefficients.T, directions, out=out).div_(draws)
            return
        per_chunk = max(1, MAX_PROBE_ELEMENTS // (draws * max(1, numel)))
        for first in range(0, oracle.num_tasks, per_chunk):
            tasks = range(first, min(oracle.num_tasks, first + per_chunk))
            directions = torch.stack([oracle.random_direction() for _ in range(len(tasks) * draws)])
            coefficients = central_differences(oracle, move, directions, self.mu).view(len(tasks), draws, -1)
            for row, task in enumerate(tasks):
                out[task] = coefficients[row, :, task] @ directions[row * draws : (row + 1) * draws] / draws

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
