"""Distributed step cost: data-parallel, ZeRO-2 and ZeRO-3 (2 gloo ranks), on the engine's own partitions
and on DeepSpeed's ZeRO stages 1-3 (``ds-zero*``), against the local run on the same global batch.

Prints, per mode: median step time and its ratio to the local step; bytes each rank sends per step
(ring cost of every collective, counted by the engine's shim) against K*P values of the gradient
dtype, the size of the per-task gradient matrix that must be reduced; the per-task gradient buffer
each rank keeps after the reduction (peak over the run) relative to data-parallel (target 1/N); and
the shared-parameter values each rank keeps between steps (allocated storage of the model's shared
tensors plus any master shard) relative to data-parallel (ZeRO-3 target 1/N; ZeRO-2 keeps the full
tensors and a shard master copy). DeepSpeed's own collectives are counted at ``deepspeed.comm`` by the
same ring cost; its float32 master partitions count as held parameters.

    .venv/bin/python benchmarks/distributed_step.py [--aggregator mean] [--wrapper none] [--steps 20]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from flatmtl.workers import mtl
from flatmtl.workers.engine import (
    Collectives,
    DataParallelComm,
    DeepSpeedZero,
    ShardedMTLStep,
    ShardedOptimizer,
    TrafficCounter,
    launch,
    sharded_comm,
)
from flatmtl.workers.engine.deepspeed_zero import import_deepspeed

NUM_TASKS = 4
IN_FEATURES = 64
HIDDEN = 256
GLOBAL_BATCH = 256
MODES = ("ddp", "zero2", "zero3", "ds-zero1", "ds-zero2", "ds-zero3")


class MLPHPS(nn.Module):
    """A two-layer shared MLP trunk and one linear regression head per task."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(IN_FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(HIDDEN, 1) for _ in range(NUM_TASKS))

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())

    def task_parameters(self) -> list[list[nn.Parameter]]:
        return [list(head.parameters()) for head in self.heads]

    def task_losses(self, x: Tensor, y: Tensor) -> Tensor:
        features = self.trunk(x)
        return ((torch.cat([head(features) for head in self.heads], dim=1) - y) ** 2).mean(dim=0)


def _data() -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(GLOBAL_BATCH, IN_FEATURES, generator=generator), torch.randn(
        GLOBAL_BATCH, NUM_TASKS, generator=generator
    )


def _model() -> MLPHPS:
    torch.manual_seed(0)
    return MLPHPS()


def _time_steps(
    step: Callable[[Callable[[], Tensor]], object],
    optimizer: torch.optim.Optimizer | ShardedOptimizer | DeepSpeedZero,
    closure: Callable[[], Tensor],
    steps: int,
    before_step: Callable[[], None] = lambda: None,
) -> list[float]:
    """Seconds per step (forward, per-task backward, collectives, optimizer), after 2 warm-up steps."""
    times = []
    for _ in range(steps + 2):
        before_step()
        started = time.perf_counter()
        if isinstance(optimizer, DeepSpeedZero):
            with optimizer.gathered():
                step(closure)
                optimizer.hand_over()
        else:
            step(closure)
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - started)
    return times[2:]


def run_local(args: argparse.Namespace) -> float:
    torch.set_num_threads(1)
    x, y = _data()
    model = _model()
    step = mtl.MTLStep.from_model(model, aggregator=args.aggregator, wrapper=args.wrapper)
    optimizer = torch.optim.SGD([*model.parameters(), *step.parameters()], lr=0.01)
    return statistics.median(_time_steps(step, optimizer, lambda: model.task_losses(x, y), args.steps))


def _persistent_parameter_bytes(
    model: MLPHPS, optimizer: torch.optim.Optimizer | ShardedOptimizer | DeepSpeedZero
) -> int:
    """Shared-parameter bytes held between steps: the shared tensors' storage and the sharded master copy.

    DeepSpeed: the shared tensors' own elements (views into its flat buffer at stages 1-2, empty at stage 3),
    its stage-3 partitions and its float32 master partitions (heads included).
    """
    if isinstance(optimizer, DeepSpeedZero):
        shared = model.shared_parameters()
        held = sum(p.numel() * p.element_size() for p in shared)
        held += sum(p.ds_tensor.numel() * p.ds_tensor.element_size() for p in shared if hasattr(p, "ds_tensor"))
        with optimizer._optimizer_groups():
            groups = optimizer.optimizer.param_groups
            return held + sum(t.numel() * t.element_size() for group in groups for t in group["params"])
    held = sum(p.untyped_storage().nbytes() for p in model.shared_parameters())
    if isinstance(optimizer, ShardedOptimizer):
        held += optimizer.master.numel() * optimizer.master.element_size()
    return held


def _count_deepspeed_traffic(counter: TrafficCounter, world: int) -> None:
    """Count DeepSpeed's collectives (it calls them through ``deepspeed.comm``) by their ring cost; its
    ``allgather_fn``/``reduce_scatter_fn`` call the counted ``all_gather_into_tensor``/``reduce_scatter_tensor``."""
    comm = import_deepspeed().comm
    share = (world - 1) / world

    def nbytes(tensor: Tensor) -> int:
        return tensor.numel() * tensor.element_size()

    costs = {
        "all_reduce": lambda tensor, *a, **k: 2 * share * nbytes(tensor),
        "reduce_scatter_tensor": lambda output, tensor, *a, **k: share * nbytes(tensor),
        "all_gather_into_tensor": lambda output, tensor, *a, **k: share * nbytes(output),
        "broadcast": lambda tensor, *a, **k: nbytes(tensor),
    }
    for name, cost in costs.items():
        original = getattr(comm, name)

        def counted(*args: object, _original: Callable = original, _cost: Callable = cost, **kwargs: object) -> object:
            counter.add(_cost(*args, **kwargs))
            return _original(*args, **kwargs)

        setattr(comm, name, counted)


def _rank_main(rank: int, world: int, out: str, aggregator: str, wrapper: str, steps: int) -> None:
    x, y = _data()
    xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
    results = {}
    counter = TrafficCounter()
    _count_deepspeed_traffic(counter, world)
    for mode in MODES:
        model = _model()
        collectives = Collectives(counter=counter)
        kwargs = {"aggregator": aggregator, "wrapper": wrapper}
        heads = [p for head in model.task_parameters() for p in head]
        if mode == "ddp":
            comm = DataParallelComm(collectives)
            step = mtl.MTLStep.from_model(model, comm=comm, **kwargs)
            optimizer = torch.optim.SGD([*model.parameters(), *step.parameters()], lr=0.01)
        elif mode == "ds-zero1":
            comm = DataParallelComm(collectives)
            step = mtl.MTLStep.from_model(model, comm=comm, **kwargs)
            optimizer = DeepSpeedZero(
                1, model.shared_parameters(), [*heads, *step.parameters()], torch.optim.SGD, world_size=world, lr=0.01
            )
        elif mode.startswith("ds-"):
            comm = sharded_comm(model.shared_parameters(), collectives)
            step = ShardedMTLStep.from_model(model, comm=comm, **kwargs)
            optimizer = DeepSpeedZero(
                int(mode[-1]),
                model.shared_parameters(),
                [*heads, *step.parameters()],
                torch.optim.SGD,
                shard=step.shared,
                world_size=world,
                lr=0.01,
            )
        else:
            comm = sharded_comm(model.shared_parameters(), collectives)
            step = ShardedMTLStep.from_model(model, comm=comm, partition_parameters=mode == "zero3", **kwargs)
            optimizer = ShardedOptimizer(
                step.shared, [*heads, *step.parameters()], torch.optim.SGD, partition=step.partition, lr=0.01
            )
        closure = functools.partial(model.task_losses, xs, ys)
        times = _time_steps(step, optimizer, closure, steps, counter.reset)
        results[mode] = {
            "seconds": statistics.median(times),
            "bytes_sent": counter.bytes_sent,
            "buffer_bytes": comm.peak_task_gradient_bytes,
            "parameter_bytes": _persistent_parameter_bytes(model, optimizer),
            "shared_numel": sum(p.numel() for p in model.shared_parameters()),
            "element_size": model.shared_parameters()[0].element_size(),
        }
    if rank == 0:
        Path(out).write_text(json.dumps(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aggregator", default="mean")
    parser.add_argument("--wrapper", default="none")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    world = 2
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ranks.json"
        launch(_rank_main, world, str(out), args.aggregator, args.wrapper, args.steps, backend="gloo")
        results = json.loads(out.read_text())
    local = run_local(args)
    lower_bound = NUM_TASKS * results["ddp"]["shared_numel"] * results["ddp"]["element_size"]
    print(
        f"K={NUM_TASKS} P={results['ddp']['shared_numel']} global batch={GLOBAL_BATCH} N={world} (gloo, 1 thread/rank)"
    )
    print(f"method: {args.aggregator} + {args.wrapper}; local step {local * 1e3:.2f} ms")
    ddp = results["ddp"]
    for mode in MODES:
        r = results[mode]
        print(
            f"{mode:8s} step {r['seconds'] * 1e3:7.2f} ms ({r['seconds'] / local:.2f}x local)  "
            f"bytes/step/rank {r['bytes_sent']:>9d} ({r['bytes_sent'] / lower_bound:.3f}x K*P)  "
            f"task-grad buffer {r['buffer_bytes']:>8d} B ({r['buffer_bytes'] / ddp['buffer_bytes']:.3f}x DDP)  "
            f"params held {r['parameter_bytes']:>7d} B ({r['parameter_bytes'] / ddp['parameter_bytes']:.3f}x DDP)"
        )


if __name__ == "__main__":
    main()
