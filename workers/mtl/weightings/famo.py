"""FAMO: fast adaptive multitask optimization (Liu et al., NeurIPS 2023)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from flatmtl.workers.mtl.base import LossWeighting, on_device_of
from flatmtl.workers.mtl.checks import check_num_tasks
from flatmtl.workers.mtl.registry import HParam, register
from flatmtl.workers.mtl.weightings.si import check_positive


def famo_weights(logits: list[float], losses: list[float]) -> list[float]:
    """w_i = c z_i / L_i with z = softmax(logits) and c = (sum_i z_i / L_i)^-1."""
    shares = [share / loss for share, loss in zip(softmax(logits), losses, strict=True)]
    total = math.fsum(shares)
    return [share / total for share in shares]


def softmax(logits: list[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(logit - top) for logit in logits]
    total = math.fsum(exps)
    return [value / total for value in exps]


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
    """K numbers each (float64 tensors in the state), kept as host numbers: updated from the one read of the losses
    their positivity check makes, a few kernel calls per step where the same arithmetic on tensors took dozens."""

    def __init__(self, lr: float, weight_decay: float) -> None:
        self.lr = lr
        self.weight_decay = weight_decay
        self.logits: list[float] | None = None
        self.previous_losses: list[float] | None = None
        self.weights: list[float] | None = None
        self._step_weights: Tensor | None = None
        """``weights`` on the losses' device and in their dtype, made once per step for ``weigh``."""

    def state_dict(self) -> dict[str, Any]:
        return {key: _as_tensor(getattr(self, key)) for key in self.state_keys}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state_keys(state)
        for key in self.state_keys:
            setattr(self, key, None if state[key] is None else state[key].double().tolist())
        self._step_weights = None

    def begin_step(self, losses: Tensor, generator: torch.Generator | None = None) -> None:
        values = check_positive(self.method_name, losses)
        logits = [0.0] * len(values) if self.logits is None else self.logits
        check_num_tasks(self.method_name, len(logits), len(values))
        if self.previous_losses is not None:
            decrease = [
                math.log(before) - math.log(now) for before, now in zip(self.previous_losses, values, strict=True)
            ]
            shares = softmax(logits)
            mean_decrease = math.fsum(share * change for share, change in zip(shares, decrease, strict=True))
            logits = [
                logit - self.lr * (share * (change - mean_decrease) + self.weight_decay * logit)
                for logit, share, change in zip(logits, shares, decrease, strict=True)
            ]
        self.logits = logits
        self.previous_losses = values
        self.weights = famo_weights(logits, values)
        self._step_weights = on_device_of(torch.tensor(self.weights, dtype=losses.dtype), losses)

    def weigh(self, losses: Tensor) -> Tensor:
        return self.step_weights(losses) * losses

    def step_weights(self, losses: Tensor) -> Tensor:
        weights = self._step_weights
        if weights is None:  # no step begun since construction or a load: the loaded weights, else the losses'
            values = self.weights or famo_weights(
                [0.0] * losses.shape[0], check_positive(self.method_name, losses.detach())
            )
            weights = on_device_of(torch.tensor(values, dtype=losses.dtype), losses)
        check_num_tasks(self.method_name, weights.shape[0], losses.shape[0])
        return weights.to(losses.dtype)


def _as_tensor(values: list[float] | None) -> Tensor | None:
    return None if values is None else torch.tensor(values, dtype=torch.float64)
