"""The MTL core's step (``flatmtl.workers.mtl.step.MTLStep``) on sharded shared parameters, for the zero2/zero3
sharding modes (``flatmtl.workers.engine.sharding_modes``), and the shardability check for job validation.

The wrappers and aggregators are the core's own; only where parameters live changes: the oracle's
``shared`` is a ShardedFlatParams and its communicator a ShardedComm. SPSA directions are drawn at
full length from the step's shared generator and sliced to this rank's slots: each rank then holds
exactly its slice of the direction the unsharded run draws, and every generator advances by the same
amount, so all later random choices (PCGrad order, RLW weights) also stay aligned with the unsharded
run. Drawing P numbers per direction costs far less than the forward pass it feeds; a counter-based
scheme could skip to the slice, but torch's CPU generator cannot jump ahead.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor

from flatmtl.workers.engine.collectives import Collectives
from flatmtl.workers.engine.communicators import ShardedComm
from flatmtl.workers.engine.layout import ShardLayout
from flatmtl.workers.engine.partition import PartitionedParameters
from flatmtl.workers.engine.shard import ShardedFlatParams
from flatmtl.workers.mtl import registry
from flatmtl.workers.mtl.errors import MethodError
from flatmtl.workers.mtl.flat import FlatParams
from flatmtl.workers.mtl.oracle import GradientOracle, LossClosure, StepRecord
from flatmtl.workers.mtl.step import MTLStep, ParameterSplit


def check_shardable(weighting: str, aggregator: str, wrapper: str) -> None:
    """Raise MethodError at validation time if any of the three methods cannot run on shards."""
    for kind, name in (("weighting", weighting), ("aggregator", aggregator), ("wrapper", wrapper)):
        method = registry.spec(kind, name)  # type: ignore[arg-type]
        if not method.shardable:
            allowed = ", ".join(m.name for m in registry.methods(kind) if m.shardable)  # type: ignore[arg-type]
            raise MethodError(
                f"{kind} {name!r} cannot run with sharded parameters (it needs the full per-task gradients); "
                f"use data-parallel mode, or one of the shardable {kind}s: {allowed}"
            )


class ShardedOracle(GradientOracle):
    shared: ShardedFlatParams

    def random_direction(self) -> Tensor:
        template = self.shared.params[0]
        full = torch.randn(
            self.shared.full_numel, generator=self.generator, dtype=template.dtype, device=template.device
        )
        return self.shared.layout.local(full)


def _name(method: Any, default: str) -> str:
    if method is None:
        return default
    return method if isinstance(method, str) else type(method).method_name


def sharded_comm(params: Sequence[Tensor], collectives: Collectives) -> ShardedComm:
    """The flat, evenly padded layout of ``params`` over the group, and its communicator."""
    flat = FlatParams(params)
    layout = ShardLayout(flat.numel, collectives.world_size, collectives.rank, flat.segment_ids)
    return ShardedComm(collectives, layout)


class ShardedMTLStep(MTLStep):
    """``MTLStep`` whose shared parameters are this rank's shard; pair it with a ``ShardedOptimizer``.

    ``partition_parameters`` (ZeRO-3) also partitions the shared parameters themselves: from here on
    a rank keeps only its shard (``self.partition``), and each call gathers the full tensors for the
    step and frees them when the step's last backward is done. Pass ``partition=step.partition`` to
    the optimizer, and wrap anything else that runs the model (evaluation, saving) in
    ``step.full_parameters()``.
    """

    oracle_class = ShardedOracle

    def __init__(
        self, split: ParameterSplit, *, comm: ShardedComm, partition_parameters: bool = False, **kwargs: Any
    ) -> None:
        check_shardable(
            _name(kwargs.get("weighting"), "ew"),
            _name(kwargs.get("aggregator"), "mean"),
            _name(kwargs.get("wrapper"), "none"),
        )
        super().__init__(split, comm=comm, **kwargs)
        self.comm: ShardedComm = comm
        self.shared: ShardedFlatParams = ShardedFlatParams(split.shared, comm)
        self.probes = None  # probe offsets are shard slices: one forward per point moves the shards
        self.partition = PartitionedParameters(self.shared) if partition_parameters else None

    def __call__(self, closure: LossClosure) -> StepRecord:
        with self.full_parameters():
            return super().__call__(closure)

    def full_parameters(self) -> AbstractContextManager[None]:
        """The full shared parameters inside the block (a collective under ZeRO-3, a no-op otherwise)."""
        return nullcontext() if self.partition is None else self.partition.gathered()
