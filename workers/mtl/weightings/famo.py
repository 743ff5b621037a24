"""FAMO: fast adaptive multitask optimization (Liu et al., NeurIPS 2023)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from flatmtl.workers.mtl.base import LossWeighting
from flatmtl.workers.mtl.checks import check_num_tasks
from flatmtl.workers.mtl.registry import HParam, register
from flatmtl.workers.mtl.weightings.si import check_positive


def famo_weights(logits: Tensor, losses: Tensor) -> Tensor:
    """w_i = c z_i / L_i with z = softmax(logits) and c = (sum_i z_i / L_i)^-1."""
    shares = torch.softmax(logits, dim=0) / losses
    return shares / shares.sum()


@register(
    "weighting",
    "famo",
    description="Softmax task weights on log losses, adapted so that every log loss falls at the same rate.",
    paper="Liu et al. 2023, FAMO: Fast Adaptive Multitask Optimization (NeurIPS)",
    scale="weights c z_i / L_i (z on the simplex, c = 1 / sum_i z_i / L_i): c times the gradient of sum_i z_i log L_i",
    hparams=(
        HParam("lr", float, 0.025, "step size of the logit update (the paper's beta)", low=0.0, low_open=True),
        HParam("weight_decay", float, 0.001, "decay of the logits (the paper's gamma)", low=0.0),
    ),
)
class FAMO(LossWeighting):
    """Weighted loss w_i L_i with w_i = c z_i / L_i fixed per step, z = softmax(xi), so the update is
    c sum_i z_i grad log L_i.

    Logit update, in ``begin_step`` from the step's unperturbed raw losses (averaged over ranks):
    delta = log L(t-1) - log L(t), the decrease of each log loss between consecutive steps, each
    measured on its own step's batch (no extra forward pass after the optimizer step), then one
    gradient step xi <- xi - lr (J_softmax(xi)^T delta + weight_decay xi), the paper's plain update.
    Equal decreases leave xi unchanged (J^T 1 = 0). State: xi and the previous step's losses.
    """

    state_keys: ClassVar[tuple[str, ...]] = ("logits", "previous_losses", "weights")

    def __init__(self, lr: float, weight_decay: float) -> None:
        self.lr = lr
        self.weight_decay = weight_decay
        self.logits: Tensor | None = None
        self.previous_losses: Tensor | None = None
        self.weights: Tensor | None = None

    def begin_step(self, losses: Tensor, generator: torch.Generator | None = None) -> None:
        check_positive(self.method_name, losses)
        losses = losses.detach().to(torch.float64)
        if self.logits is None:
            self.logits = torch.zeros_like(losses)
        check_num_tasks(self.method_name, self.logits.shape[0], losses.shape[0])
        if self.previous_losses is not None:
            decrease = self.previous_losses.log() - losses.log()
            shares = torch.softmax(self.logits, dim=0)
            softmax_vjp = shares * (decrease - shares @ decrease)
            self.logits = self.logits - self.lr * (softmax_vjp + self.weight_decay * self.logits)
        self.previous_losses = losses.clone()
        self.weights = famo_weights(self.logits, losses)

    def weigh(self, losses: Tensor) -> Tensor:
        weights = self.weights
        if weights is None:
            check_positive(self.method_name, losses.detach())
            logits = torch.zeros(losses.shape[0], dtype=torch.float64, device=losses.device)
            weights = famo_weights(logits, losses.detach().to(torch.float64))
        check_num_tasks(self.method_name, weights.shape[0], losses.shape[0])
        return weights.to(device=losses.device, dtype=losses.dtype) * losses
