"""Which samples each rank trains on, as a pure function of (seed, epoch, batch index).

Every epoch is one seeded permutation of the training set cut into global batches of
``batch_size * world_size`` samples; rank r takes the r-th contiguous slice of each. A run with N ranks
therefore sees exactly the global batches of a one-process run with N times the batch size, and the data
position of a checkpoint is just (epoch, batch index): nothing else needs saving to resume the stream.
The last incomplete global batch of an epoch is dropped, so every rank's share has the same size and the
mean of the ranks' mean losses is the global batch's mean loss.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate


class BatchPlan:
    def __init__(self, size: int, batch_size: int, *, world_size: int = 1, rank: int = 0, seed: int = 0) -> None:
        self.size = size
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.global_batch = batch_size * world_size
        self.steps_per_epoch = size // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"batch_size={batch_size} x processes={world_size} = {self.global_batch} exceeds the {size} training "
                f"samples; allowed: batch_size <= {size // world_size}"
            )

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's permutation of sample indices (the sampler's whole random state is (seed, epoch))."""
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(epoch,))).permutation(self.size)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """(batch index, this rank's sample indices) from batch ``start`` to the end of the epoch."""
        order = self.order(epoch)
        for batch in range(start, self.steps_per_epoch):
            offset = batch * self.global_batch + self.rank * self.batch_size
            yield batch, order[offset : offset + self.batch_size]


def collate(dataset: Dataset[Any], indices: Sequence[int] | np.ndarray) -> Any:
    """The samples as one batch; a dataset with a ``batch(indices)`` method (in-memory tensors) gathers them at once."""
    gather = getattr(dataset, "batch", None)
    if callable(gather):
        return gather(indices)
    return default_collate([dataset[int(i)] for i in indices])


def to_device(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Tensors moved to ``device``; floating-point ones also cast to the run's dtype (inputs match the model)."""
    if isinstance(value, Tensor):
        return value.to(device=device, dtype=dtype) if value.is_floating_point() else value.to(device)
    if isinstance(value, list | tuple):
        return type(value)(to_device(v, device, dtype) for v in value)
    return value


def model_input(inputs: Any) -> Any:
    """Multi-input problems collate their K inputs as a tuple; the models take a list."""
    return list(inputs) if isinstance(inputs, tuple) else inputs
