"""FlatMTL's training engine: data-parallel and sharded communicators for the MTL core, the sharded
step and optimizer, ZeRO-3 parameter partitioning, running-statistics averaging, and a local
process-group launcher.

Sharding modes: zero1 partitions the shared parameters' optimizer state; zero2 also reduce-scatters the
per-task gradients [K, P] so each rank keeps and aggregates only its [K, P/N] shard; zero3 also keeps
only the shard of the shared parameters between steps and all-gathers them for the step.

Why ZeRO's partitioning is implemented here rather than taken from DeepSpeed: an MTL step differentiates
the shared parameters K times (once per task, plus the SAM variants' perturbed passes) and must reduce
the [K, P] matrix before any aggregation. DeepSpeed's ZeRO hooks assume one backward per step. Tried with
DeepSpeed 0.19.8 on CPU: ZeRO-1/2 accept an externally computed gradient (``safe_set_full_grad``) only
after an ``engine.backward`` (one extra backward per step), and partition the flat buffer differently from
the layout the shard-local Gram and norm statistics need; ZeRO-3 frees the gathered parameters after the
first backward, so the second per-task backward fails on zero-sized parameters. The engine therefore owns
one flat layout (``ShardLayout``) for gradients, optimizer state and parameters, and its wrappers run
unchanged on shards. DeepSpeed remains available as the owner of the partitions (``DeepSpeedZero``): the
engine still reduces and aggregates the per-task gradients and hands DeepSpeed only the finished update
through its public backward, which costs one extra reduction of P numbers per step.
"""

from workers.engine.buffers import RunningStatisticsAverager, running_statistics
from workers.engine.collectives import Collectives, TrafficCounter
from workers.engine.comm import DataParallelComm, ShardedComm
from workers.engine.deepspeed_zero import DeepSpeedZero
from workers.engine.launch import launch
from workers.engine.layout import ShardLayout
from workers.engine.partition import PartitionedParameters
from workers.engine.shard import ShardedFlatParams, ShardedOptimizer
from workers.engine.sharded_step import ShardedMTLStep, ShardedOracle, check_shardable, sharded_comm

__all__ = [
    "Collectives",
    "DataParallelComm",
    "DeepSpeedZero",
    "PartitionedParameters",
    "RunningStatisticsAverager",
    "ShardLayout",
    "ShardedComm",
    "ShardedFlatParams",
    "ShardedMTLStep",
    "ShardedOptimizer",
    "ShardedOracle",
    "TrafficCounter",
    "check_shardable",
    "launch",
    "running_statistics",
    "sharded_comm",
]
