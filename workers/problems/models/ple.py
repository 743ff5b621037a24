"""Progressive Layered Extraction (Tang et al., RecSys 2020) for tabular inputs.

Each extraction level has shared experts and each task's own experts. A task's gate mixes its own experts and
the shared ones for that task's next input; below the last level a shared gate mixes every expert into the next
shared input. So below the last level every expert, a task's own included, feeds every task (through the shared
gate): those are shared parameters here. A task's own parameters are its last-level experts and gate and its
tower, the only ones no other task's output depends on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flatmtl.workers.problems.errors import ProblemError
from flatmtl.workers.problems.models.base import MultiTaskNet
from flatmtl.workers.problems.models.encoders import MLPEncoder


def _gate(in_features: int, experts: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_features, experts), nn.Softmax(dim=1))


class ExtractionLevel(nn.Module):
    """One customized gate control (CGC) level: shared experts, per-task experts, per-task gates and, where
    another level follows, the shared gate."""

    def __init__(self, in_features: int, tasks: int, shared: int, own: int, hidden: Sequence[int], last: bool) -> None:
        super().__init__()
        self.shared_experts = nn.ModuleList(MLPEncoder((in_features,), hidden) for _ in range(shared))
        self.task_experts = nn.ModuleList(
            nn.ModuleList(MLPEncoder((in_features,), hidden) for _ in range(own)) for _ in range(tasks)
        )
        self.task_gates = nn.ModuleList(_gate(in_features, own + shared) for _ in range(tasks))
        self.shared_gate = None if last else _gate(in_features, tasks * own + shared)

    def forward(
        self, shared_in: Tensor, shared_out: Tensor, task_inputs: Sequence[Tensor]
    ) -> tuple[list[Tensor], Tensor | None]:
        """Each task's mix of its own experts (on its input) and the shared experts' outputs ``shared_out``
        [N, S, D]; and the next shared input (None on the last level)."""
        pairs = zip(self.task_experts, task_inputs, strict=True)
        own = [torch.stack([e(x) for e in experts], dim=1) for experts, x in pairs]
        mixes = [
            (gate(x).unsqueeze(2) * torch.cat([outputs, shared_out], dim=1)).sum(dim=1)
            for gate, x, outputs in zip(self.task_gates, task_inputs, own, strict=True)
        ]
        if self.shared_gate is None:
            return mixes, None
        every = torch.cat([*own, shared_out], dim=1)
        return mixes, (self.shared_gate(shared_in).unsqueeze(2) * every).sum(dim=1)


class PLE(MultiTaskNet):
    """``num_levels`` extraction levels, then a tower per task. The representation is what the last level's
    task-specific parts read: the shared experts' outputs and (above the first level) the tasks' inputs."""

    def __init__(
        self,
        input_shape: Sequence[int],
        out_features: Sequence[int],
        *,
        num_levels: int = 2,
        shared_experts: int = 2,
        task_experts: int = 2,
        expert_hidden: Sequence[int] = (64, 32),
        tower_hidden: int = 16,
    ) -> None:
        super().__init__()
        if len(input_shape) != 1:
            raise ProblemError(f"ple takes feature vectors, got inputs of shape {tuple(input_shape)}")
        for name, value in (("num_levels", num_levels), ("shared_experts", shared_experts)):
            if value < 1:
                raise ProblemError(f"ple: {name} must be >= 1, got {value}")
        if task_experts < 1:
            raise ProblemError(f"ple: task_experts must be >= 1, got {task_experts}")
        hidden = list(expert_hidden)
        widths = [int(input_shape[0])] + [hidden[-1]] * (num_levels - 1)
        self.levels = nn.ModuleList(
            ExtractionLevel(width, len(out_features), shared_experts, task_experts, hidden, last=i == num_levels - 1)
            for i, width in enumerate(widths)
        )
        self.towers = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden[-1], tower_hidden), nn.ReLU(), nn.Linear(tower_hidden, out))
            for out in out_features
        )

    def task_parameters(self) -> list[list[nn.Parameter]]:
        last = self.levels[-1]
        return [
            [*experts.parameters(), *gate.parameters(), *tower.parameters()]
            for experts, gate, tower in zip(last.task_experts, last.task_gates, self.towers, strict=True)
        ]

    def shared_parameters(self) -> list[nn.Parameter]:
        own = {id(p) for params in self.task_parameters() for p in params}
        return [p for p in self.parameters() if id(p) not in own]

    def forward_with_representation(self, x: Tensor | list[Tensor]) -> tuple[list[Tensor], Tensor]:
        if not isinstance(x, Tensor):
            raise ProblemError("ple takes one input tensor, got a list")
        x = x.flatten(1)
        shared_in, task_inputs = x, [x] * len(self.towers)
        for level in self.levels[:-1]:
            shared_out = torch.stack([e(shared_in) for e in level.shared_experts], dim=1)
            task_inputs, next_shared = level(shared_in, shared_out, task_inputs)
            shared_in = next_shared  # type: ignore[assignment]
        last = self.levels[-1]
        shared_out = torch.stack([e(shared_in) for e in last.shared_experts], dim=1)
        n, experts, width = shared_out.shape
        parts = [shared_out.reshape(n, -1), *(task_inputs if len(self.levels) > 1 else [])]
        representation = torch.cat(parts, dim=1)
        pieces = representation.split([p.shape[1] for p in parts], dim=1)
        shared_out = pieces[0].view(n, experts, width)
        if len(self.levels) > 1:
            task_inputs = list(pieces[1:])
        mixes, _ = last(shared_in, shared_out, task_inputs)
        return [tower(mix) for tower, mix in zip(self.towers, mixes, strict=True)], representation
