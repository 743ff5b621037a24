"""A list of parameter tensors seen as one flat vector, without copying the parameters.

Aggregators and SAM perturbations work on [P] vectors; this maps them to and from the model's
tensors. Each tensor is one "layer" for layer-wise norms (SAMO's normalization, ASAM).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class FlatParams:
    """``like``: a tensor whose device and dtype an empty list's vectors take (a task without head parameters
    still has a [0] gradient, and it must live with the others to be concatenated or reduced with them)."""

    def __init__(self, params: Sequence[Tensor], *, like: Tensor | None = None) -> None:
        self.params = list(params)
        template = self.params[0] if self.params else like
        self.device = template.device if template is not None else torch.device("cpu")
        self.dtype = template.dtype if template is not None else torch.get_default_dtype()
        self.numels = [p.numel() for p in self.params]
        self.numel = sum(self.numels)
        bounds = torch.tensor([0, *self.numels]).cumsum(0)
        self.segment_ids = torch.repeat_interleave(
            torch.arange(len(self.params)), torch.tensor(self.numels, dtype=torch.long)
        )
        self.bounds = bounds.tolist()

    @property
    def num_layers(self) -> int:
        return len(self.params)

    def flatten(self, tensors: Sequence[Tensor | None]) -> Tensor:
        """Concatenate per-parameter tensors (None means zero) into one [P] vector."""
        parts = [
            torch.zeros(n, dtype=p.dtype, device=p.device) if t is None else t.reshape(-1)
            for t, p, n in zip(tensors, self.params, self.numels, strict=True)
        ]
        if not parts:
            return torch.zeros(0, dtype=self.dtype, device=self.device)
        return torch.cat(parts)

    def flatten_batched(self, tensors: Sequence[Tensor | None], batch: int) -> Tensor:
        """Concatenate per-parameter [B, *shape] tensors into one [B, P] matrix."""
        parts = [
            torch.zeros(batch, n, dtype=p.dtype, device=p.device) if t is None else t.reshape(batch, -1)
            for t, p, n in zip(tensors, self.params, self.numels, strict=True)
        ]
        if not parts:
            return torch.zeros(batch, 0, dtype=self.dtype, device=self.device)
        return torch.cat(parts, dim=1)

    def views(self, flat: Tensor) -> list[Tensor]:
        """Per-parameter views into a [P] vector."""
        return [flat[a:b].view_as(p) for a, b, p in zip(self.bounds[:-1], self.bounds[1:], self.params, strict=True)]

    def values(self) -> Tensor:
        """A flat copy of the current parameter values."""
        return self.flatten([p.detach() for p in self.params]).clone()

    @torch.no_grad()
    def add_(self, flat: Tensor, alpha: float = 1.0) -> None:
        if not self.params:
            return
        torch._foreach_add_([p.data for p in self.params], self.views(flat), alpha=alpha)

    @torch.no_grad()
    def copy_(self, flat: Tensor) -> None:
        if not self.params:
            return
        torch._foreach_copy_([p.data for p in self.params], self.views(flat))

    def set_grad(self, flat: Tensor) -> None:
        for p, view in zip(self.params, self.views(flat), strict=True):
            p.grad = view.detach().clone()

    def layer_sq_norms(self, flat: Tensor) -> Tensor:
        """Squared norm of each layer's slice of a [P] (or [K, P]) vector: [L] (or [K, L]).

        One reduction per contiguous slice (one fused kernel for a [P] vector) rather than a scatter over the
        P coordinates."""
        if not self.params:
            return flat.new_zeros(*flat.shape[:-1], 0)
        parts = flat.split(self.numels, dim=-1)
        if flat.dim() == 1:
            return torch.stack(torch._foreach_norm(list(parts))).pow(2)
        return torch.stack([part.pow(2).sum(-1) for part in parts], dim=-1)

    def expand_layers(self, per_layer: Tensor) -> Tensor:
        """Broadcast one value per layer ([L] or [K, L]) to every coordinate ([P] or [K, P]); expanded slices
        joined, which avoids the index tensor ``repeat_interleave`` or a gather over P would build."""
        pieces = [
            value.unsqueeze(-1).expand(*value.shape, numel)
            for value, numel in zip(per_layer.unbind(-1), self.numels, strict=True)
        ]
        return torch.cat(pieces, dim=-1) if pieces else per_layer.new_zeros(*per_layer.shape[:-1], 0)
