"""Which coordinates of the flat shared-parameter vector each rank owns.

The [P] vector is zero-padded to N * S and rank r owns the contiguous slots [r S, (r + 1) S). Padding
slots always hold zeros in reduced gradients and are dropped when shards are gathered; per-layer
statistics send them to an extra bucket that is discarded, so they never touch a norm.
"""

from __future__ import annotations

import torch
from torch import Tensor


class ShardLayout:
    def __init__(self, numel: int, world_size: int, rank: int, segment_ids: Tensor) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is not allowed for world_size={world_size}; allowed: 0..{world_size - 1}")
        if segment_ids.numel() != numel:
            raise ValueError(f"segment_ids has {segment_ids.numel()} entries, expected numel={numel}")
        self.numel = numel
        self.world_size = world_size
        self.rank = rank
        self.shard_numel = -(-numel // world_size)
        self.padded_numel = self.shard_numel * world_size
        self.start = min(rank * self.shard_numel, numel)
        self.stop = min((rank + 1) * self.shard_numel, numel)
        self.local_numel = self.stop - self.start
        self.num_layers = int(segment_ids.max()) + 1 if numel else 0
        pad_bucket = torch.full((self.shard_numel - self.local_numel,), self.num_layers, dtype=torch.long)
        self.local_segment_ids = torch.cat([segment_ids[self.start : self.stop].long(), pad_bucket])

    def local(self, full: Tensor) -> Tensor:
        """This rank's slots of a full [..., P] tensor, zero-padded to [..., S]."""
        part = full[..., self.start : self.stop]
        missing = self.shard_numel - self.local_numel
        if missing == 0:
            return part.clone()
        return torch.nn.functional.pad(part, (0, missing))

    def stacked(self, full: Tensor) -> Tensor:
        """A [K, P] tensor as N contiguous [K, S] chunks (chunk r = rank r's slots), for reduce-scatter."""
        rows = full.shape[0]
        padded = torch.nn.functional.pad(full, (0, self.padded_numel - self.numel))
        return padded.view(rows, self.world_size, self.shard_numel).transpose(0, 1).reshape(-1, self.shard_numel)
