"""FlatMTL's training engine: data-parallel and sharded communicators for the MTL core, the sharded
step and optimizer, and a local process-group launcher."""

from workers.engine.collectives import Collectives, TrafficCounter
from workers.engine.comm import DataParallelComm, ShardedComm
from workers.engine.launch import launch
from workers.engine.layout import ShardLayout
from workers.engine.shard import ShardedFlatParams, ShardedOptimizer
from workers.engine.sharded_step import ShardedMTLStep, ShardedOracle, check_shardable, sharded_comm

__all__ = [
    "Collectives",
    "DataParallelComm",
    "ShardLayout",
    "ShardedComm",
    "ShardedFlatParams",
    "ShardedMTLStep",
    "ShardedOptimizer",
    "ShardedOracle",
    "TrafficCounter",
    "check_shardable",
    "launch",
    "sharded_comm",
]
