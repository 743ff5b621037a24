"""Sharding modes: how one rank's training step is distributed, behind the one interface the trainer calls.

The MTL core's step (``flatmtl.workers.mtl.step.MTLStep``, or ``ShardedMTLStep`` on shards) computes the
update of one batch. A sharding mode decides everything around it: which step is built and with which
communicator, which optimizer owns which partition, what must be gathered for the step, evaluation and
checkpoints, how the step's update reaches the optimizer, and what a checkpoint saves of the optimizer.

- ``LocalMode``: one process; the core's step with its identity communicator and a torch optimizer.
- ``DataParallelMode`` (``sharding="none"``): per-task gradients all-reduced (``DataParallelComm``); parameters
  and optimizer state replicated.
- ``Zero1Mode``: as data-parallel, but the shared parameters' optimizer state is partitioned
  (``ShardedOptimizer`` over a shard view): any method runs, since every rank still sees whole gradients.
- ``ShardedMode`` (zero2, zero3): per-task gradients reduce-scattered (``ShardedMTLStep``), each rank aggregates
  and optimizes only its shard, so only shardable methods run (TrainSpec refuses the others); zero3 also keeps
  only the shard of the shared parameters between steps, all-gathered for each step (and for evaluation and
  checkpoints, which hold the full model on rank 0).
- ``DeepSpeedMode`` (``sharding_backend="deepspeed"``, stages 1-3): the same per-task reduction (all-reduce at
  stage 1, reduce-scatter at stages 2 and 3), but DeepSpeed's ZeRO engine of that stage owns the partitions of
  the optimizer state (and of gradients and parameters) and takes the aggregated update (``DeepSpeedZero``).

Every multi-process mode averages the normalization layers' running statistics over ranks after each step
(``RunningStatisticsAverager``), so every rank evaluates with the same buffers.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Protocol

import torch

from flatmtl.workers.engine.buffers import RunningStatisticsAverager
from flatmtl.workers.engine.collectives import Collectives
from flatmtl.workers.engine.communicators import DataParallelComm
from flatmtl.workers.engine.deepspeed_zero import DeepSpeedZero
from flatmtl.workers.engine.shard import ShardedFlatParams, ShardedOptimizer
from flatmtl.workers.engine.sharded_mtl_step import ShardedMTLStep, sharded_comm
from flatmtl.workers.mtl.oracle import StepRecord
from flatmtl.workers.mtl.step import MTLStep

if TYPE_CHECKING:
    from flatmtl.workers.problems.models.base import MultiTaskNet

OptimizerChoice = tuple[type[torch.optim.Optimizer], dict[str, Any]]
"""A torch optimizer class and its keyword options: every mode builds its optimizer (or shards) from them."""

PrepareStep = Callable[[MTLStep], None]
"""Called with the new step before the optimizer exists (a resume restores the method's state and learnable
weights there: DeepSpeed's stage 3 partitions the learnable weights when it is built)."""


class ShardingMode(Protocol):
    """One rank's step under a sharding mode: the trainer calls this and never asks which mode it is."""

    step: MTLStep
    """The MTL step the trainer calls inside ``take_step``."""
    torch_optimizer: torch.optim.Optimizer
    """The torch optimizer the learning-rate schedule drives (over whatever partition this rank owns)."""

    def full_parameters(self) -> AbstractContextManager[None]:
        """The whole model inside the block (a gather under zero3), for evaluation and checkpoints."""
        ...

    def take_step(self, run_step: Callable[[], StepRecord]) -> StepRecord:
        """One training step: ``run_step`` calls the MTL step on a batch (through the trainer, which may wrap
        it), then the update goes to the optimizer, which steps and clears the gradients."""
        ...

    def communication_bytes(self) -> int:
        """What this rank sent in the collectives of the last ``take_step`` (0 on one process)."""
        ...

    def optimizer_state(self) -> dict[str, Any]:
        """This rank's optimizer state, as a checkpoint saves it."""
        ...

    def load_optimizer_state(self, state: dict[str, Any]) -> None: ...


def build_sharding_mode(
    model: MultiTaskNet,
    *,
    distributed: bool,
    sharding: str,
    backend: str,
    method: dict[str, Any],
    optimizer: OptimizerChoice,
    prepare_step: PrepareStep,
) -> ShardingMode:
    """The mode of a spec's ``sharding`` and ``sharding_backend``; ``method`` holds ``MTLStep``'s keyword options.

    One process trains locally whatever the sharding; a distributed mode uses the default process group.
    """
    if not distributed:
        return LocalMode(model, method, optimizer, prepare_step)
    collectives = Collectives()
    if backend == "deepspeed":
        stage = int(sharding.removeprefix("zero"))
        return DeepSpeedMode(stage, model, collectives, method, optimizer, prepare_step)
    if sharding in ("zero2", "zero3"):
        partition = sharding == "zero3"
        return ShardedMode(model, collectives, method, optimizer, prepare_step, partition_parameters=partition)
    if sharding == "zero1":
        return Zero1Mode(model, collectives, method, optimizer, prepare_step)
    return DataParallelMode(model, collectives, method, optimizer, prepare_step)


class _StepsAndClears(Protocol):
    """What takes a distributed mode's update: a torch optimizer, ``ShardedOptimizer`` or ``DeepSpeedZero``."""

    def step(self) -> Any: ...

    def zero_grad(self) -> Any: ...


def _head_parameters(model: MultiTaskNet) -> list[torch.nn.Parameter]:
    return [p for head in model.task_parameters() for p in head]


class LocalMode:
    def __init__(
        self, model: MultiTaskNet, method: dict[str, Any], optimizer: OptimizerChoice, prepare: PrepareStep
    ) -> None:
        self.step = MTLStep.from_model(model, **method)
        prepare(self.step)
        factory, options = optimizer
        self.torch_optimizer = factory([*model.parameters(), *self.step.parameters()], **options)

    def full_parameters(self) -> AbstractContextManager[None]:
        return nullcontext()

    def take_step(self, run_step: Callable[[], StepRecord]) -> StepRecord:
        record = run_step()
        self.torch_optimizer.step()
        self.torch_optimizer.zero_grad()
        return record

    def communication_bytes(self) -> int:
        return 0

    def optimizer_state(self) -> dict[str, Any]:
        return self.torch_optimizer.state_dict()

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        self.torch_optimizer.load_state_dict(state)


class _Distributed:
    """What the multi-process modes share: counted collectives, the step run inside ``full_parameters``, running
    statistics averaged after each step, and (unless a mode says otherwise) a model that is whole on every rank
    and a torch optimizer's state."""

    torch_optimizer: torch.optim.Optimizer
    optimizer: _StepsAndClears

    def __init__(self, model: MultiTaskNet, collectives: Collectives) -> None:
        self.collectives = collectives
        self.running_statistics = RunningStatisticsAverager(model, collectives)

    def full_parameters(self) -> AbstractContextManager[None]:
        return nullcontext()

    def take_step(self, run_step: Callable[[], StepRecord]) -> StepRecord:
        self.collectives.counter.reset()
        with self.full_parameters():
            record = run_step()
            self.hand_over_update()
        self.running_statistics()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return record

    def hand_over_update(self) -> None:
        """Moves the step's update from the parameters' ``.grad`` to where ``optimizer`` reads it, while the
        full parameters are still there; nothing to move where the optimizer reads ``.grad``."""

    def communication_bytes(self) -> int:
        return self.collectives.counter.bytes_sent

    def optimizer_state(self) -> dict[str, Any]:
        return self.torch_optimizer.state_dict()

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        self.torch_optimizer.load_state_dict(state)


class DataParallelMode(_Distributed):
    def __init__(
        self,
        model: MultiTaskNet,
        collectives: Collectives,
        method: dict[str, Any],
        optimizer: OptimizerChoice,
        prepare: PrepareStep,
    ) -> None:
        super().__init__(model, collectives)
        self.step = MTLStep.from_model(model, comm=DataParallelComm(collectives), **method)
        prepare(self.step)
        factory, options = optimizer
        self.torch_optimizer = factory([*model.parameters(), *self.step.parameters()], **options)
        self.optimizer = self.torch_optimizer


class Zero1Mode(_Distributed):
    """The core's step on whole gradients; the shared parameters' update is cut to this rank's shard for the
    ``ShardedOptimizer``, which all-gathers the updated shards into every rank's parameters."""

    def __init__(
        self,
        model: MultiTaskNet,
        collectives: Collectives,
        method: dict[str, Any],
        optimizer: OptimizerChoice,
        prepare: PrepareStep,
    ) -> None:
        super().__init__(model, collectives)
        heads = _head_parameters(model)
        self.step = MTLStep.from_model(model, comm=DataParallelComm(collectives), **method)
        prepare(self.step)
        shared = model.shared_parameters()
        self.shard_view = ShardedFlatParams(shared, sharded_comm(shared, collectives))
        factory, options = optimizer
        self.optimizer = ShardedOptimizer(self.shard_view, [*heads, *self.step.parameters()], factory, **options)
        self.torch_optimizer = self.optimizer.optimizer

    def hand_over_update(self) -> None:
        view = self.shard_view
        view.grad_shard = view.layout.local(view.flatten([p.grad for p in view.params]))
        for param in view.params:
            param.grad = None


class ShardedMode(_Distributed):
    """zero2, and zero3 with ``partition_parameters``: the step and the optimizer work on this rank's shard."""

    def __init__(
        self,
        model: MultiTaskNet,
        collectives: Collectives,
        method: dict[str, Any],
        optimizer: OptimizerChoice,
        prepare: PrepareStep,
        *,
        partition_parameters: bool,
    ) -> None:
        super().__init__(model, collectives)
        heads = _head_parameters(model)
        comm = sharded_comm(model.shared_parameters(), collectives)
        self.step = ShardedMTLStep.from_model(model, comm=comm, partition_parameters=partition_parameters, **method)
        prepare(self.step)
        factory, options = optimizer
        self.optimizer = ShardedOptimizer(
            self.step.shared, [*heads, *self.step.parameters()], factory, partition=self.step.partition, **options
        )
        self.torch_optimizer = self.optimizer.optimizer

    def full_parameters(self) -> AbstractContextManager[None]:
        return self.step.full_parameters()


class DeepSpeedMode(_Distributed):
    """DeepSpeed's ZeRO stage 1, 2 or 3 owns the partitions; the step's reduction is the engine's own
    (all-reduce at stage 1, reduce-scatter at stages 2 and 3), and the finished update is handed over inside
    the step's gathered parameters."""

    optimizer: DeepSpeedZero

    def __init__(
        self,
        stage: int,
        model: MultiTaskNet,
        collectives: Collectives,
        method: dict[str, Any],
        optimizer: OptimizerChoice,
        prepare: PrepareStep,
    ) -> None:
        super().__init__(model, collectives)
        heads = _head_parameters(model)
        shared = model.shared_parameters()
        if stage == 1:
            self.step = MTLStep.from_model(model, comm=DataParallelComm(collectives), **method)
        else:
            self.step = ShardedMTLStep.from_model(model, comm=sharded_comm(shared, collectives), **method)
        prepare(self.step)
        factory, options = optimizer
        self.optimizer = DeepSpeedZero(
            stage,
            shared,
            [*heads, *self.step.parameters()],
            factory,
            shard=self.step.shared if isinstance(self.step, ShardedMTLStep) else None,
            world_size=collectives.world_size,
            **options,
        )
        self.torch_optimizer = self.optimizer.optimizer

    def full_parameters(self) -> AbstractContextManager[None]:
        return self.optimizer.gathered()

    def hand_over_update(self) -> None:
        self.optimizer.hand_over()

    def optimizer_state(self) -> dict[str, Any]:
        """DeepSpeed's view of its partitions (stage 3 lends them to the torch optimizer for this)."""
        return self.optimizer.state_dict()

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)
