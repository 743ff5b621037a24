"""Normalization running statistics kept identical on every rank.

Each rank's training forward updates BatchNorm's running statistics from its own batch, so without a
rule the ranks' buffers drift apart (and evaluation then depends on the rank). DDP's default broadcasts
rank 0's buffers before each forward, which keeps ranks equal but discards the other ranks' batches.
Here the running means and variances are averaged over ranks after each step, with one all-reduce of
all of them. The running mean is an exponential average, linear in the batch means, so with equal
per-rank batches the average is exactly the running mean a one-process run on the concatenated batch
keeps (up to rounding), given the same parameters. The running variance becomes the mean of the
per-rank (unbiased) batch variances, which misses the spread of the rank means: close to, not equal
to, the one-process value. Batch statistics inside the training forward stay per rank (as in DDP
without SyncBatchNorm), so a BatchNorm model's parameters follow the per-rank-statistics method, not
the one-process run. Counters (``num_batches_tracked``) advance identically on every rank and are left alone.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from flatmtl.workers.engine.collectives import Collectives


def running_statistics(modules: Iterable[nn.Module]) -> list[Tensor]:
    """The ``running_mean``/``running_var`` buffers of every normalization layer that tracks them."""
    found: list[Tensor] = []
    for module in modules:
        for name in ("running_mean", "running_var"):
            value = getattr(module, name, None)
            if isinstance(value, Tensor) and value.is_floating_point():
                found.append(value)
    return found


class RunningStatisticsAverager:
    """Averages the running statistics of ``model``'s normalization layers over the group's ranks."""

    def __init__(self, model: nn.Module, collectives: Collectives) -> None:
        self.buffers = running_statistics(model.modules())
        self.collectives = collectives

    @torch.no_grad()
    def __call__(self) -> None:
        if not self.buffers or self.collectives.world_size == 1:
            return
        flat = torch.cat([b.reshape(-1) for b in self.buffers])
        self.collectives.all_reduce_sum_(flat).div_(self.collectives.world_size)
        chunks = flat.split([b.numel() for b in self.buffers])
        torch._foreach_copy_(self.buffers, [c.view_as(b) for c, b in zip(chunks, self.buffers, strict=True)])
