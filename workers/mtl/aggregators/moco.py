"""MoCo (Fernando et al., "Mitigating Gradient Bias in Multi-objective Learning: A Provably Convergent
Approach", ICLR 2023): tracked gradients and simplex weights updated by one projected step."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from flatmtl.workers.mtl.base import Aggregator, GramReducer, gram_matrix, on_device_of
from flatmtl.workers.mtl.checks import check_finite_through, check_num_tasks
from flatmtl.workers.mtl.errors import MethodError
from flatmtl.workers.mtl.registry import HParam, register


def project_to_simplex(vector: Tensor) -> Tensor:
    """Euclidean projection onto {w >= 0, sum w = 1} (sort-based, exact)."""
    ordered, _ = torch.sort(vector, descending=True)
    excess = ordered.cumsum(0) - 1.0
    ranks = torch.arange(1, vector.numel() + 1, dtype=vector.dtype, device=vector.device)
    support = int((ordered - excess / ranks > 0).nonzero().max())
    return (vector - excess[support] / (support + 1)).clamp_min(0.0)


@register(
    "aggregator",
    "moco",
    description="Track each task gradient with an EMA and take one projected step on the simplex weights per step.",
    paper="Fernando et al. 2023, Mitigating Gradient Bias in Multi-objective Learning (ICLR)",
    scale="convex combination: lambda on the simplex (sum 1) times the tracked gradients",
    hparams=(
        HParam("beta", float, 0.5, "tracking rate of the gradient EMA Y", low=0.0, high=1.0, low_open=True),
        HParam("gamma", float, 0.1, "step size of the weight update", low=0.0, low_open=True),
        HParam("rho", float, 0.0, "L2 regularization of the weights", low=0.0),
    ),
)
class MoCo(Aggregator):
    """Per step, in the paper's order (Algorithm 1, constant rates):
    Y <- Y - beta (Y - G); lambda <- Proj_simplex(lambda - gamma (Y Y^T + rho I) lambda); update = Y^T lambda.

    Y [K, P] starts at the first step's gradients (as if Y_0 = 0 with a first tracking rate of 1) and
    lambda at 1/K; both are state. Y is element-wise, so on parameter shards each rank tracks its own
    shard and only Y Y^T goes through ``reduce_gram``; lambda is then identical on every rank.
    """

    state_keys: ClassVar[tuple[str, ...]] = ("tracked", "weights")
    host_state_keys: ClassVar[tuple[str, ...]] = ("weights",)
    update_checked_by_gram: ClassVar[bool] = True  # Y Y^T checked finite, lambda on the simplex: Y^T lambda is too

    def __init__(self, beta: float, gamma: float, rho: float) -> None:
        self.beta = beta
        self.gamma = gamma
        self.rho = rho
        self.tracked: Tensor | None = None
        self.weights: Tensor | None = None

    def aggregate(
        self,
        grads: Tensor,
        *,
        losses: Tensor | None,
        generator: torch.Generator | None,
        reduce_gram: GramReducer,
    ) -> Tensor:
        grads = grads.detach()
        num_tasks = grads.shape[0]
        if self.tracked is None:
            tracked = grads.clone()
        else:
            check_num_tasks(self.method_name, self.tracked.shape[0], num_tasks)
            if self.tracked.shape != grads.shape:
                raise MethodError(
                    f"{self.method_name}: tracked gradients have shape {tuple(self.tracked.shape)}, "
                    f"got gradients of shape {tuple(grads.shape)}"
                )
            tracked = self.tracked + self.beta * (grads - self.tracked)
        gram = reduce_gram(gram_matrix(tracked)).detach()
        check_finite_through(self.method_name, gram, grads)  # before the state moves
        self.tracked = tracked
        gram = gram.to("cpu", torch.float64)
        if self.weights is None:
            self.weights = torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64)
        regularized = gram + self.rho * torch.eye(num_tasks, dtype=torch.float64)
        self.weights = project_to_simplex(self.weights - self.gamma * regularized @ self.weights)
        return on_device_of(self.weights, grads) @ self.tracked
