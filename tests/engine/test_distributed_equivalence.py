"""Real 2-process gloo runs: data-parallel equals the 1-process run on the concatenated batch, sharded
equals data-parallel, and every rank holds the same weights after every step.

One process group is launched for the whole module and runs every method inside it, so process
start-up is paid once. Methods other helpers have not registered yet are skipped by name.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.mtl.models import TinyHPS
from workers import mtl
from workers.engine import Collectives, DataParallelComm, ShardedMTLStep, ShardedOptimizer, launch, sharded_comm
from workers.mtl.registry import methods

WORLD = 2
STEPS = 4
LR = 0.1
NUM_TASKS = 3
AGGREGATORS = ("mean", "mgda", "pcgrad", "cagrad", "nash_mtl", "moco", "graddrop")
WRAPPERS = ("sam", "fmtl", "samo")
WEIGHTINGS = ("rlw",)
SHARD_LOCAL_RANDOMNESS = {"graddrop"}
"""Draw their per-coordinate randomness per shard: same distribution as unsharded, not the same numbers."""

Combo = tuple[str, str, str]


def _combos() -> list[Combo]:
    """(weighting, aggregator, wrapper) triples whose methods are all registered."""
    registered = {(m.kind, m.name) for m in methods()}
    aggregators = [a for a in AGGREGATORS if ("aggregator", a) in registered]
    under_wrappers = "mgda" if "mgda" in aggregators else "mean"
    wrapped = [("ew", under_wrappers, w) for w in WRAPPERS if ("wrapper", w) in registered]
    weighted = [(w, "mean", "none") for w in WEIGHTINGS if ("weighting", w) in registered]
    return [("ew", a, "none") for a in aggregators] + wrapped + weighted


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, 6, dtype=torch.float64, generator=generator)
    return x, torch.randn(16, NUM_TASKS, dtype=torch.float64, generator=generator)


def _model() -> TinyHPS:
    torch.manual_seed(0)
    return TinyHPS(NUM_TASKS, batch_norm=False).double()


def _flat(model: TinyHPS) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def _train(mode: str, combo: Combo, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Parameters after each of STEPS SGD steps, [STEPS, P_total]."""
    model = _model()
    weighting, aggregator, wrapper = combo
    kwargs = {"weighting": weighting, "aggregator": aggregator, "wrapper": wrapper, "seed": 3}
    if mode == "sharded":
        step = ShardedMTLStep.from_model(model, comm=sharded_comm(model.shared_parameters(), Collectives()), **kwargs)
        heads = [p for head in model.task_parameters() for p in head]
        optimizer = ShardedOptimizer(step.shared, [*heads, *step.parameters()], torch.optim.SGD, lr=LR)
    else:
        comm = DataParallelComm(Collectives()) if mode == "ddp" else None
        step = mtl.MTLStep.from_model(model, comm=comm, **kwargs)
        optimizer = torch.optim.SGD([*model.parameters(), *step.parameters()], lr=LR)
    trajectory = []
    for _ in range(STEPS):
        step(lambda: model.task_losses(x, y))
        optimizer.step()
        optimizer.zero_grad()
        trajectory.append(_flat(model))
    return torch.stack(trajectory)


def _rank_main(rank: int, world: int, out: str, combos: list[Combo]) -> None:
    x, y = _data()
    xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
    results = {(*combo, mode): _train(mode, combo, xs, ys) for combo in combos for mode in ("ddp", "sharded")}
    model = _model()
    step = ShardedMTLStep.from_model(model, comm=sharded_comm(model.shared_parameters(), Collectives()), seed=5)
    oracle_direction = _sharded_direction(step)
    torch.save({"trajectories": results, "direction": oracle_direction}, Path(out) / f"rank{rank}.pt")


def _sharded_direction(step: ShardedMTLStep) -> torch.Tensor:
    """Gathered SPSA direction drawn through the sharded oracle's random_direction."""
    from workers.engine.sharded_step import ShardedOracle

    oracle = ShardedOracle(
        lambda: torch.zeros(NUM_TASKS),
        step.shared,
        step.heads,
        step.weighting,
        step.aggregator,
        step.comm,
        step.generator,
        step.gradient_engine,
    )
    return step.comm.gather(oracle.random_direction())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Combo], list[dict]]:
    combos = _combos()
    out = tmp_path_factory.mktemp("ranks")
    launch(_rank_main, WORLD, str(out), combos, backend="gloo", timeout_s=60)
    return combos, [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def test_data_parallel_and_sharded_match_one_process_and_ranks_agree(runs) -> None:
    combos, ranks = runs
    assert ("ew", "mean", "none") in combos
    x, y = _data()
    for combo in combos:
        local = _train("local", combo, x, y)
        ddp = [r["trajectories"][(*combo, "ddp")] for r in ranks]
        sharded = [r["trajectories"][(*combo, "sharded")] for r in ranks]
        label = "+".join(combo)
        for other in range(1, WORLD):
            assert torch.equal(ddp[0], ddp[other]), f"{label}: DDP ranks disagree"
            assert torch.equal(sharded[0], sharded[other]), f"{label}: sharded ranks disagree"
        assert not torch.equal(local[-1], _flat(_model())), f"{label}: the run did not move the parameters"
        torch.testing.assert_close(ddp[0], local, rtol=0, atol=1e-6, msg=lambda m, label=label: f"{label} DDP: {m}")
        if combo[1] not in SHARD_LOCAL_RANDOMNESS:
            torch.testing.assert_close(
                sharded[0], ddp[0], rtol=0, atol=1e-5, msg=lambda m, label=label: f"{label}: {m}"
            )


def test_sharded_random_direction_is_the_unsharded_draw(runs) -> None:
    _, ranks = runs
    model = _model()
    numel = sum(p.numel() for p in model.shared_parameters())
    expected = torch.randn(numel, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for rank in ranks:
        assert torch.equal(rank["direction"], expected)
