"""FlatMTL's training engine: the sharding modes the trainer runs its steps through (``sharding_modes``),
data-parallel and sharded communicators for the MTL core, the core's step on shards (``sharded_mtl_step``) and
the sharded optimizer, ZeRO-3 parameter partitioning, running-statistics averaging, and a local process-group
launcher.

Sharding modes: zero1 partitions the shared parameters' optimizer state; zero2 also reduce-scatters the
per-task gradients [K, P] so each rank keeps and aggregates only its [K, P/N] shard; zero3 also keeps
only the shard of the shared parameters between steps and all-gathers them for the step.

Two owners of the partitions, one reduction. An MTL step differentiates the shared parameters K times
(once per task, plus the SAM variants' perturbed passes) and must reduce the [K, P] matrix before any
aggregation, which DeepSpeed's ZeRO hooks (one backward per step) cannot do. So the engine always reduces,
aggregates and perturbs on its own flat layout (``ShardLayout``: shard-local Gram and norm statistics), and
either keeps the partitions itself (``ShardedOptimizer``, ``PartitionedParameters``; the default) or hands
the finished update to DeepSpeed's ZeRO engine of the same stage (``DeepSpeedZero``, through a backward that
touches no model computation; one more reduction of every trainable parameter's gradient per step, float32
master weights). DeepSpeed's
own route fails here: ``safe_set_full_grad`` is refused at stages 1-2 before an ``engine.backward``, and its
stage-3 hooks free the parameters after the first of the step's backward passes.
"""

from flatmtl.workers.engine.buffers import RunningStatisticsAverager, running_statistics
from flatmtl.workers.engine.collectives import Collectives, TrafficCounter
from flatmtl.workers.engine.communicators import DataParallelComm, ShardedComm
from flatmtl.workers.engine.deepspeed_zero import DeepSpeedZero
from flatmtl.workers.engine.launch import check_backend, launch
from flatmtl.workers.engine.layout import ShardLayout
from flatmtl.workers.engine.partition import PartitionedParameters
from flatmtl.workers.engine.shard import ShardedFlatParams, ShardedOptimizer
from flatmtl.workers.engine.sharded_mtl_step import ShardedMTLStep, ShardedOracle, check_shardable, sharded_comm
from flatmtl.workers.engine.sharding_modes import ShardingMode, build_sharding_mode

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
    "ShardingMode",
    "TrafficCounter",
    "build_sharding_mode",
    "check_backend",
    "check_shardable",
    "launch",
    "running_statistics",
    "sharded_comm",
]
