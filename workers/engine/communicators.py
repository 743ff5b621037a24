"""Data-parallel and sharded implementations of the core's ``Communicator``.

Both reduce per-task gradients BEFORE aggregation, as one [K, P] buffer: a nonlinear aggregator of
rank-local gradients averaged afterwards would be a different method. Data-parallel all-reduces the
buffer so every rank holds the global [K, P]; sharded reduce-scatters it so rank r holds only its
[K, S] slots (S = ceil(P / N)) and shard-local statistics (K x K Grams, K x L squared norms) are
summed with small all-reduces. Every rank then computes the same weights from the same numbers.
"""

from __future__ import annotations

from torch import Tensor

from flatmtl.workers.engine.collectives import Collectives
from flatmtl.workers.engine.layout import ShardLayout


class DataParallelComm:
    """Whole parameters on every rank; losses, head and task gradients averaged over ranks."""

    def __init__(self, collectives: Collectives) -> None:
        self.collectives = collectives
        self.rank = collectives.rank
        self.world_size = collectives.world_size
        self.peak_task_gradient_bytes = 0
        """Largest reduced per-task gradient buffer this rank has held (sharded: 1/N of data-parallel)."""

    def _remember(self, reduced: Tensor) -> Tensor:
        self.peak_task_gradient_bytes = max(self.peak_task_gradient_bytes, reduced.numel() * reduced.element_size())
        return reduced

    def mean(self, tensor: Tensor) -> Tensor:
        out = tensor.detach().clone()
        return self.collectives.all_reduce_sum_(out).div_(self.world_size)

    def reduce_task_gradients(self, grads: Tensor) -> Tensor:
        """One all-reduce of the stacked [K, P] buffer (in place: the oracle hands over a fresh one)."""
        return self._remember(self.collectives.all_reduce_sum_(grads.detach()).div_(self.world_size))

    def shard_sum(self, tensor: Tensor) -> Tensor:
        return tensor


class ShardedComm(DataParallelComm):
    """Shared parameters sharded by ``layout``: task gradients reduce-scattered, statistics all-reduced."""

    def __init__(self, collectives: Collectives, layout: ShardLayout) -> None:
        super().__init__(collectives)
        if (layout.world_size, layout.rank) != (self.world_size, self.rank):
            raise ValueError(
                f"layout is for rank {layout.rank} of {layout.world_size}, "
                f"the process group has rank {self.rank} of {self.world_size}"
            )
        self.layout = layout

    def reduce_task_gradients(self, grads: Tensor) -> Tensor:
        """[K, P] of this rank's batch -> this rank's [K, S] slots of the global mean."""
        out = grads.new_empty(grads.shape[0], self.layout.shard_numel)
        self.collectives.reduce_scatter_sum(out, self.layout.stacked(grads.detach()))
        return self._remember(out.div_(self.world_size))

    def shard_sum(self, tensor: Tensor) -> Tensor:
        out = tensor.detach().clone()
        return self.collectives.all_reduce_sum_(out)

    def gather(self, shard: Tensor) -> Tensor:
        """This rank's [S] slots -> the full [P] vector on every rank."""
        out = shard.new_empty(self.layout.padded_numel)
        self.collectives.all_gather(out, shard.detach().contiguous())
        return out[: self.layout.numel]
