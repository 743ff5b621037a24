"""UW: uncertainty weighting (Kendall et al., "Multi-Task Learning Using Uncertainty to Weigh Losses
for Scene Geometry and Semantics", CVPR 2018)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from flatmtl.workers.mtl.base import LossWeighting
from flatmtl.workers.mtl.checks import check_num_tasks
from flatmtl.workers.mtl.errors import MethodError
from flatmtl.workers.mtl.registry import register


class LearnedLogScales(LossWeighting):
    """A learnable vector s [K] (one log-scale per task, starting at 0) trained by the user's optimizer.

    K is not known when a method is built by name, so ``setup`` creates s; the step calls it before
    the optimizer is built. State is s's value, restored in place so the optimizer keeps its tensor.
    """

    state_keys: ClassVar[tuple[str, ...]] = ("log_scales",)

    def __init__(self) -> None:
        self._log_scales: Tensor | None = None

    def setup(self, num_tasks: int, *, dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> None:
        """Create s = 0 for ``num_tasks`` tasks (kept when already created for the same K)."""
        if self._log_scales is not None:
            check_num_tasks(self.method_name, self._log_scales.shape[0], num_tasks)
            return
        # a Parameter, not a bare leaf: optimizer wrappers that own parameters through a module (DeepSpeed) need one
        self._log_scales = nn.Parameter(torch.zeros(num_tasks, dtype=dtype, device=device))

    @property
    def log_scales(self) -> Tensor:
        if self._log_scales is None:
            raise MethodError(
                f"{self.method_name}: learnable log-scales not created; call setup(num_tasks) before building "
                "the optimizer (MTLStep does)"
            )
        return self._log_scales

    def parameters(self) -> list[Tensor]:
        return [self.log_scales]

    def state_dict(self) -> dict[str, Any]:
        return {"log_scales": self.log_scales.detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state_keys(state)
        value = state["log_scales"]
        self.setup(value.shape[0], dtype=value.dtype, device=value.device)
        with torch.no_grad():
            self.log_scales.copy_(value)

    def weigh(self, losses: Tensor) -> Tensor:
        check_num_tasks(self.method_name, self.log_scales.shape[0], losses.shape[0])
        return self.scale(self.log_scales.to(losses.dtype), losses)

    def scale(self, log_scales: Tensor, losses: Tensor) -> Tensor:
        raise NotImplementedError

    def step_weights(self, losses: Tensor) -> Tensor:
        """The scales' factors, fixed in the step (the optimizer moves s between steps)."""
        check_num_tasks(self.method_name, self.log_scales.shape[0], losses.shape[0])
        return self.factors(self.log_scales.detach().to(losses.dtype))

    def factors(self, log_scales: Tensor) -> Tensor:
        raise NotImplementedError


@register(
    "weighting",
    "uw",
    description="Learned homoscedastic uncertainty: weights exp(-s_i) with regularizer s_i (s_i = log sigma_i^2).",
    paper="Kendall et al. 2018, Multi-Task Learning Using Uncertainty to Weigh Losses (CVPR)",
    scale="sum: weights exp(-s_i), 1 at the start; the optimum weight is 1 / L_i",
)
class UncertaintyWeighting(LearnedLogScales):
    """Weighted loss exp(-s_i) L_i + s_i with s_i = log sigma_i^2 learned by the user's optimizer.

    Convention: twice Kendall's 1/(2 sigma^2) L + log sigma (the 1/2 dropped, as common
    implementations do): same minimizer s_i = log L_i, gradients of the model twice as large. The
    regularizer s_i carries no model gradient; s's gradient is -exp(-s_i) L_i + 1.
    """

    def scale(self, log_scales: Tensor, losses: Tensor) -> Tensor:
        return torch.exp(-log_scales) * losses + log_scales

    def factors(self, log_scales: Tensor) -> Tensor:
        return torch.exp(-log_scales)

    def learnable_grads(self, losses: Tensor, weights: Tensor) -> list[Tensor]:
        """1 - exp(-s_i) L_i."""
        return [(1 - weights * losses).to(self.log_scales.dtype)]
