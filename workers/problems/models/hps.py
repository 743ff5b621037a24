"""Hard parameter sharing: one shared encoder, one head per task."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flatmtl.workers.problems.errors import ProblemError
from flatmtl.workers.problems.models.base import MultiTaskNet


class HardSharing(MultiTaskNet):
    """Shared ``encoder`` and per-task ``heads`` on its features.

    With ``multi_input`` (one input per task, e.g. Office-Home domains) ``forward`` takes a list of K inputs;
    each goes through the shared encoder, and the representation is their concatenation along the batch,
    which the heads read back in slices, so gradients with respect to it reach every task.
    """

    def __init__(self, encoder: nn.Module, heads: Sequence[nn.Module], *, multi_input: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleList(heads)
        self.multi_input = multi_input

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def task_parameters(self) -> list[list[nn.Parameter]]:
        return [list(head.parameters()) for head in self.heads]

    def task_heads(self) -> list[nn.Module]:
        return list(self.heads)

    def forward_with_representation(self, x: Tensor | list[Tensor]) -> tuple[list[Tensor], Tensor]:
        if not self.multi_input:
            if not isinstance(x, Tensor):
                raise ProblemError("this model takes one input tensor, got a list (multi_input is off)")
            representation = self.encoder(x)
            return self._heads(representation), representation
        if isinstance(x, Tensor) or len(x) != len(self.heads):
            raise ProblemError(f"this multi-input model takes a list of {len(self.heads)} inputs, one per task")
        representation = torch.cat([self.encoder(xt) for xt in x])
        parts = representation.split([len(xt) for xt in x])
        return [head(part) for head, part in zip(self.heads, parts, strict=True)], representation

    def _heads(self, representation: Tensor) -> list[Tensor]:
        """Every head on one representation. Without a graph (evaluation, SAMO's forward-only probes) plain
        linear heads run as one matrix product, K times fewer calls; with one, each head is called as
        itself, so per-head hooks (the core's trunk cut) see their inputs."""
        heads = list(self.heads)
        if torch.is_grad_enabled() or not _plain_linears(heads):
            return [head(representation) for head in heads]
        weight = torch.cat([head.weight for head in heads])
        bias = None if heads[0].bias is None else torch.cat([head.bias for head in heads])
        fused = nn.functional.linear(representation, weight, bias)
        return list(fused.split([head.out_features for head in heads], dim=-1))


def _plain_linears(heads: Sequence[nn.Module]) -> bool:
    """Hook-free ``nn.Linear`` heads of one dtype and device, all with a bias or all without: one matrix
    product computes them all."""
    if not all(type(head) is nn.Linear and not (head._forward_hooks or head._forward_pre_hooks) for head in heads):
        return False
    alike = {(head.weight.dtype, head.weight.device, head.bias is None) for head in heads}  # type: ignore[union-attr]
    return len(alike) == 1
