"""ZeRO-3: the shared parameters themselves are partitioned.

Between steps a rank persistently holds only its [S] shard of the flat shared-parameter vector (the
sharded optimizer's master copy); the model's shared tensors keep their shapes but their storage is
resized to zero, so a forward that runs without a gather fails loudly instead of using stale values.
``gathered()`` all-gathers the shards into the full tensors for the duration of one step (every
forward and backward pass it takes, SAM's perturbed ones included) and frees them afterwards.

Granularity is the whole shared trunk, not per module: the core takes K per-task backward passes (and
SAM variants several forward/backward rounds) through one graph, and autograd keeps references to the
parameters it saved, so releasing a module's weights after its forward would break the next backward
(DeepSpeed's own ZeRO-3 hooks fail that way; ``DeepSpeedZero.gathered()`` gathers the whole trunk too).
Peak memory inside a step is therefore a full copy of the shared parameters; what is saved is the
persistent copy and everything that lives across steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from flatmtl.workers.engine.shard import ShardedFlatParams


class PartitionedParameters:
    """Owns this rank's persistent shard and gathers/releases the full shared tensors around steps."""

    def __init__(self, shared: ShardedFlatParams) -> None:
        self.shared = shared
        self._nbytes = [p.numel() * p.element_size() for p in shared.params]
        pointers = set()
        for param, nbytes in zip(shared.params, self._nbytes, strict=True):
            storage = param.untyped_storage()
            if param.storage_offset() != 0 or storage.nbytes() != nbytes or storage.data_ptr() in pointers:
                raise ValueError(
                    f"zero3 needs every shared parameter to own its storage; a {tuple(param.shape)} parameter "
                    "is a view or shares storage with another (tied weights): use zero2"
                )
            pointers.add(storage.data_ptr())
        self.shard = nn.Parameter(shared.values())
        """The persistent [S] values: the optimizer updates it in place; gathers read it."""
        self.materialized = True
        self.release()

    def gather(self) -> None:
        """All-gather the shards and fill the full shared tensors (a collective on every rank)."""
        full = self.shared.comm.gather(self.shard.detach())
        with torch.no_grad():
            for param, nbytes in zip(self.shared.params, self._nbytes, strict=True):
                param.untyped_storage().resize_(nbytes)
            torch._foreach_copy_([p.data for p in self.shared.params], self.shared.views(full))
        self.materialized = True

    def release(self) -> None:
        """Free the full shared tensors; only the shard remains."""
        for param in self.shared.params:
            param.grad = None
            param.untyped_storage().resize_(0)
        self.materialized = False

    @contextmanager
    def gathered(self) -> Iterator[None]:
        """Full shared parameters inside the block (nested blocks reuse the outer gather)."""
        if self.materialized:
            yield
            return
        self.gather()
        try:
            yield
        finally:
            self.release()

    def persistent_bytes(self) -> int:
        """Bytes of shared-parameter values this rank keeps between steps (shard plus any unreleased tensor)."""
        return self.shard.numel() * self.shard.element_size() + sum(
            p.untyped_storage().nbytes() for p in self.shared.params
        )
