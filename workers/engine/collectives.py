"""The few torch.distributed collectives the engine uses, behind one shim.

torch 2.13 renamed ``reduce_scatter_tensor``/``all_gather_into_tensor`` to ``*_single`` and warns on
the old names; older torch (>= 2.4) only has the old ones. Every call also counts the bytes this rank
sends, so benchmarks can compare traffic with the K*P lower bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist
from torch import Tensor

_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


@dataclass
class TrafficCounter:
    """Bytes this rank sends, by the bandwidth-optimal (ring) cost of each collective."""

    bytes_sent: int = 0
    calls: int = 0

    def add(self, nbytes: float) -> None:
        self.bytes_sent += int(nbytes)
        self.calls += 1

    def reset(self) -> None:
        self.bytes_sent = 0
        self.calls = 0


class Collectives:
    """Sum all-reduce, sum reduce-scatter and all-gather on one process group."""

    def __init__(self, group: dist.ProcessGroup | None = None, counter: TrafficCounter | None = None) -> None:
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialized: call init_process_group (or use engine.launch)")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.counter = counter or TrafficCounter()

    def _ring_share(self, nbytes: int) -> float:
        return nbytes * (self.world_size - 1) / self.world_size

    def all_reduce_sum_(self, tensor: Tensor) -> Tensor:
        """In place; a ring all-reduce sends 2 (N-1)/N of the tensor."""
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        self.counter.add(2 * self._ring_share(tensor.numel() * tensor.element_size()))
        return tensor

    def reduce_scatter_sum(self, output: Tensor, stacked: Tensor) -> Tensor:
        """``stacked`` holds N equal chunks along dim 0; chunk r summed over ranks lands on rank r."""
        _reduce_scatter(output, stacked, op=dist.ReduceOp.SUM, group=self.group)
        self.counter.add(self._ring_share(stacked.numel() * stacked.element_size()))
        return output

    def all_gather(self, output: Tensor, local: Tensor) -> Tensor:
        """Rank r's ``local`` becomes chunk r of ``output`` (N times its size) on every rank."""
        _all_gather(output, local, group=self.group)
        self.counter.add(self._ring_share(output.numel() * output.element_size()))
        return output
