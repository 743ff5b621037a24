"""The model contract the MTL step relies on (``flatmtl.workers.mtl.step.ParameterSplit``).

A model returns one output per task, declares its shared parameters and each task's own parameters
(disjoint, together all of them), and, where one exists, exposes the shared representation every task
output is computed from, so MGDA-UB can take gradients with respect to it.
"""

from __future__ import annotations

from torch import Tensor, nn


class MultiTaskNet(nn.Module):
    """Base class: ``forward(x)`` gives the K task outputs."""

    has_representation: bool = True

    def shared_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def task_parameters(self) -> list[list[nn.Parameter]]:
        raise NotImplementedError

    def task_heads(self) -> list[nn.Module] | None:
        """The per-task modules whose inputs carry all of a task's dependence on the shared parameters,
        or None where no such modules exist (MMoE's gates, MTAN's attention read the trunk elsewhere)."""
        return None

    def forward_with_representation(self, x: Tensor | list[Tensor]) -> tuple[list[Tensor], Tensor]:
        """The K outputs and the shared representation they are computed from (on the autograd graph)."""
        raise NotImplementedError

    def forward(self, x: Tensor | list[Tensor]) -> list[Tensor]:
        return self.forward_with_representation(x)[0]
