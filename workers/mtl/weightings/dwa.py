"""DWA: dynamic weight average (Liu et al., "End-to-End Multi-Task Learning with Attention", CVPR 2019)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from flatmtl.workers.mtl.base import LossWeighting
from flatmtl.workers.mtl.checks import check_num_tasks
from flatmtl.workers.mtl.registry import HParam, register
from flatmtl.workers.mtl.weightings.ew import ones_like_kept


@register(
    "weighting",
    "dwa",
    description="Weights K softmax(r / T) from each task's epoch-to-epoch loss ratio r (slower tasks weigh more).",
    paper="Liu et al. 2019, End-to-End Multi-Task Learning with Attention (CVPR)",
    scale="sum: weights sum to K (all 1 for the first two epochs)",
    hparams=(HParam("temperature", float, 2.0, "softmax temperature T", low=0.0, low_open=True),),
)
class DynamicWeightAverage(LossWeighting):
    """w(t) = K softmax(r(t-1) / T) with r_i(t-1) = L_i(t-1) / L_i(t-2), where L(t) is the average over
    epoch t of the unperturbed raw losses seen by ``begin_step``; w = 1 until two epochs have ended.
    The weights change only at ``end_epoch``, so they are fixed within every step.
    """

    state_keys: ClassVar[tuple[str, ...]] = ("epoch_means", "loss_sum", "steps", "weights")

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature
        self.epoch_means: list[Tensor] = []
        self.loss_sum: Tensor | None = None
        self.steps = 0
        self.weights: Tensor | None = None
        self._ones: Tensor | None = None

    def begin_step(self, losses: Tensor, generator: torch.Generator | None = None) -> None:
        if self.loss_sum is None:
            self.loss_sum = torch.zeros(losses.shape, dtype=torch.float64, device=losses.device)
        check_num_tasks(self.method_name, self.loss_sum.shape[0], losses.shape[0])
        self.loss_sum.add_(losses.detach())  # in float64, where the losses widen exactly; the state is cloned out
        self.steps += 1

    def end_epoch(self) -> None:
        if self.loss_sum is None or self.steps == 0:
            return
        self.epoch_means = [*self.epoch_means, self.loss_sum / self.steps][-2:]
        self.loss_sum = torch.zeros_like(self.loss_sum)
        self.steps = 0
        if len(self.epoch_means) == 2:
            before, last = self.epoch_means
            ratios = last / before.clamp_min(torch.finfo(before.dtype).tiny)
            self.weights = ratios.numel() * torch.softmax(ratios / self.temperature, dim=0)

    def weigh(self, losses: Tensor) -> Tensor:
        if self.weights is None:
            return losses
        return self.step_weights(losses) * losses

    def step_weights(self, losses: Tensor) -> Tensor:
        if self.weights is None:
            self._ones = ones_like_kept(self._ones, losses)
            return self._ones
        check_num_tasks(self.method_name, self.weights.shape[0], losses.shape[0])
        return self.weights.to(device=losses.device, dtype=losses.dtype)
