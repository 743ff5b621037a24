"""GradNorm (Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep
Multitask Networks", ICML 2018)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from flatmtl.workers.mtl.base import LossWeighting
from flatmtl.workers.mtl.checks import check_num_tasks
from flatmtl.workers.mtl.registry import HParam, register

MIN_WEIGHT = 1e-6
"""Floor applied before renormalization so a large step cannot make a weight zero or negative."""

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
"""Adam's defaults for the weights' optimizer."""


@register(
    "weighting",
    "gradnorm",
    description="Weights moved each step so weighted gradient norms follow mean norm x (relative inverse rate)^alpha.",
    paper="Chen et al. 2018, GradNorm (ICML)",
    scale="sum: weights sum to K (all 1 at the start)",
    hparams=(
        HParam("alpha", float, 1.5, "asymmetry: how strongly slower tasks are favoured", low=0.0),
        HParam("lr", float, 0.025, "step size of the weight update", low=0.0, low_open=True),
    ),
)
class GradNorm(LossWeighting):
    """Weighted loss w_i L_i. With G_i = |grad of w_i L_i| over all shared parameters (sqrt of the
    observed Gram's diagonal; the paper uses the last shared layer), r_i = (L_i / L_i(0)) / mean_j(...)
    and target T_i = mean(G) r_i^alpha (held constant), the GradNorm loss sum_i |G_i - T_i| has gradient
    sign(G_i - T_i) G_i / w_i in w_i. As in the paper, an optimizer takes that gradient (Adam, whose
    step is about ``lr`` whatever the gradient norms' scale, so norms of 45 cannot throw a weight to the
    floor as a plain gradient step would) and the weights are renormalized to sum K, floored at
    ``MIN_WEIGHT`` first. L(0) is the first step's loss. The step observed at ``observe`` is applied at
    the next ``begin_step`` so the weights are fixed within a step (perturbed passes included).
    State: the weights, Adam's moments and step count, L(0) and the pending observation.
    """

    state_keys: ClassVar[tuple[str, ...]] = (
        "weights",
        "first_moment",
        "second_moment",
        "updates",
        "initial_losses",
        "pending_norms",
        "pending_losses",
    )
    observes_gram: ClassVar[bool] = True

    def __init__(self, alpha: float, lr: float) -> None:
        self.alpha = alpha
        self.lr = lr
        self.weights: Tensor | None = None
        self.first_moment: Tensor | None = None
        self.second_moment: Tensor | None = None
        self.updates = 0
        self.initial_losses: Tensor | None = None
        self.pending_norms: Tensor | None = None
        self.pending_losses: Tensor | None = None

    def begin_step(self, losses: Tensor, generator: torch.Generator | None = None) -> None:
        losses = losses.detach().to(torch.float64)
        if self.weights is None:
            self.weights = torch.ones_like(losses)
        check_num_tasks(self.method_name, self.weights.shape[0], losses.shape[0])
        if self.initial_losses is None:
            self.initial_losses = losses.clone()
        if self.pending_norms is not None and self.pending_losses is not None:
            self.weights = self.updated_weights(self.pending_norms, self.pending_losses)
        self.pending_norms = None
        self.pending_losses = None

    def updated_weights(self, norms: Tensor, losses: Tensor) -> Tensor:
        """The weights after one Adam step on the GradNorm loss at the observed norms and losses."""
        assert self.weights is not None and self.initial_losses is not None
        inverse_rates = losses / self.initial_losses.clamp_min(torch.finfo(losses.dtype).tiny)
        relative = inverse_rates / inverse_rates.mean().clamp_min(torch.finfo(losses.dtype).tiny)
        targets = norms.mean() * relative.pow(self.alpha)
        gradient = torch.sign(norms - targets) * norms / self.weights
        if self.first_moment is None or self.second_moment is None:
            self.first_moment, self.second_moment = torch.zeros_like(gradient), torch.zeros_like(gradient)
        self.updates += 1
        self.first_moment = ADAM_BETAS[0] * self.first_moment + (1 - ADAM_BETAS[0]) * gradient
        self.second_moment = ADAM_BETAS[1] * self.second_moment + (1 - ADAM_BETAS[1]) * gradient.pow(2)
        mean = self.first_moment / (1 - ADAM_BETAS[0] ** self.updates)
        variance = self.second_moment / (1 - ADAM_BETAS[1] ** self.updates)
        stepped = (self.weights - self.lr * mean / (variance.sqrt() + ADAM_EPS)).clamp_min(MIN_WEIGHT)
        return stepped * (stepped.numel() / stepped.sum())

    def observe(self, losses: Tensor, gram: Tensor) -> None:
        check_num_tasks(self.method_name, gram.shape[0], losses.shape[0])
        self.pending_norms = gram.detach().diagonal().to(torch.float64).clamp_min(0.0).sqrt()
        self.pending_losses = losses.detach().to(torch.float64).clone()

    def weigh(self, losses: Tensor) -> Tensor:
        if self.weights is None:
            return losses
        check_num_tasks(self.method_name, self.weights.shape[0], losses.shape[0])
        return self.weights.to(device=losses.device, dtype=losses.dtype) * losses
