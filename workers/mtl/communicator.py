"""The collective operations the MTL core needs, as a protocol with a single-process default.

The core never calls torch.distributed itself: the training engine passes a communicator for
data-parallel (all-reduce) or sharded (reduce-scatter plus small all-reduces) runs.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor


class Communicator(Protocol):
    rank: int
    world_size: int

    def mean(self, tensor: Tensor) -> Tensor:
        """Average over data-parallel ranks (losses, head gradients, whole-parameter gradients); ``tensor`` itself
        is left as it is (it may be the loss closure's output)."""
        ...

    def reduce_task_gradients(self, grads: Tensor) -> Tensor:
        """Per-task gradients [K, P] of this rank's batch -> the global mean; sharded: this rank's shard."""
        ...

    def shard_sum(self, tensor: Tensor) -> Tensor:
        """Sum of shard-local statistics (Gram matrices, squared norms); identity on whole parameters."""
        ...


class LocalComm:
    """One process, whole parameters: every collective is the identity."""

    rank = 0
    world_size = 1

    def mean(self, tensor: Tensor) -> Tensor:
        return tensor

    def reduce_task_gradients(self, grads: Tensor) -> Tensor:
        return grads

    def shard_sum(self, tensor: Tensor) -> Tensor:
        return tensor
