"""A FlatParams-like view of this rank's shard of the shared parameters.

The core's wrappers handle shared-parameter vectors through ``oracle.shared``; with this view those
vectors are this rank's [S] slots, so aggregation, SAM ascents and SPSA perturbations all run on
shards, while ``params``/``flatten``/``flatten_batched`` still address the full local tensors the
backward pass produces (before the reduce-scatter). Inside a step the full tensors exist on every
rank (replicated in ZeRO-1/2, gathered for the step in ZeRO-3): moving them gathers the shard
offsets (S numbers per rank), which keeps every rank's copy identical and lets the perturbed forward
run unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from flatmtl.workers.engine.communicators import ShardedComm
from flatmtl.workers.mtl.flat import FlatParams

if TYPE_CHECKING:
    from flatmtl.workers.engine.partition import PartitionedParameters


class ShardedFlatParams(FlatParams):
    def __init__(self, params: Sequence[Tensor], comm: ShardedComm) -> None:
        super().__init__(params)
        if comm.layout.numel != self.numel:
            raise ValueError(f"layout covers {comm.layout.numel} coordinates, the parameters have {self.numel}")
        self.comm = comm
        self.layout = comm.layout
        self.full_numel = self.numel
        self.numel = self.layout.shard_numel
        self.local_segment_ids = self.layout.local_segment_ids
        self.local_layer_numels = torch.bincount(self.local_segment_ids, minlength=self.num_layers + 1).tolist()
        """Slots of each layer in this shard, padding last: the shard is contiguous, so its layers are runs."""
        self._segment_ids_on: dict[torch.device, Tensor] = {}
        self.grad_shard: Tensor | None = None

    def values(self) -> Tensor:
        """This rank's slots of the current parameter values."""
        return self.layout.local(self.flatten([p.detach() for p in self.params]))

    @torch.no_grad()
    def add_(self, flat: Tensor, alpha: float = 1.0) -> None:
        torch._foreach_add_([p.data for p in self.params], self.views(self.comm.gather(flat)), alpha=alpha)

    @torch.no_grad()
    def copy_(self, flat: Tensor) -> None:
        torch._foreach_copy_([p.data for p in self.params], self.views(self.comm.gather(flat)))

    def set_grad(self, flat: Tensor) -> None:
        """The shard update goes to the sharded optimizer, never into the full ``.grad``."""
        self.grad_shard = flat.detach().clone()

    def layer_sq_norms(self, flat: Tensor) -> Tensor:
        """Shard-local squared norm per layer ([L] or [K, L]); sum over ranks with ``comm.shard_sum``.

        One reduction per run of a layer's slots, as ``FlatParams`` does: no scatter, so no atomics, and the
        result is the same on every run (layers with no slot here get 0)."""
        parts = list(flat.split(self.local_layer_numels, dim=-1)[: self.num_layers])
        if flat.dim() == 1:
            return torch.stack(torch._foreach_norm(parts)).pow(2)
        return torch.stack([part.pow(2).sum(-1) for part in parts], dim=-1)

    def expand_layers(self, per_layer: Tensor) -> Tensor:
        """One value per layer broadcast to this rank's slots; padding slots get zero. The slot-to-layer index
        is copied to a device once, not per call (SAMO expands 2K + 1 times a step)."""
        padded = torch.nn.functional.pad(per_layer, (0, 1))
        ids = self._segment_ids_on.get(per_layer.device)
        if ids is None:
            ids = self._segment_ids_on.setdefault(per_layer.device, self.local_segment_ids.to(per_layer.device))
        return padded[..., ids]


class ShardedOptimizer:
    """ZeRO-style optimizer: the shared parameters' state lives only for this rank's shard.

    The shard is a flat [S] master copy given to any element-wise torch optimizer (SGD, Adam, AdamW)
    together with the replicated head (and weighting) parameters. ZeRO-1/2: after each step the
    updated shards are all-gathered into every rank's parameters. ZeRO-3 (``partition``): the master
    is the partition's persistent shard, updated in place; the next step's gather reads it.
    """

    def __init__(
        self,
        shared: ShardedFlatParams,
        replicated: Sequence[Tensor],
        factory: type[torch.optim.Optimizer],
        *,
        partition: PartitionedParameters | None = None,
        **options: float,
    ) -> None:
        self.shared = shared
        self.partition = partition
        self.master = partition.shard if partition is not None else torch.nn.Parameter(shared.values())
        self.optimizer = factory([self.master, *replicated], **options)

    def step(self) -> None:
        if self.shared.grad_shard is None:
            raise RuntimeError("no shard update: run the step (which writes it) before optimizer.step()")
        self.master.grad = self.shared.grad_shard
        self.optimizer.step()
        if self.partition is None:
            self.shared.copy_(self.master.detach())

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.shared.grad_shard = None
