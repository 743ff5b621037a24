"""Real 2-process gloo runs: data-parallel equals the 1-process run on the concatenated batch, sharded
(ZeRO-2) and partitioned (ZeRO-3) equal data-parallel, and every rank holds the same weights after every
step; with BatchNorm, every rank holds the same running statistics and their running mean is the
one-process one.

One process group is launched for the whole module and runs every registered method inside it (each
aggregator under EW, each wrapper over MGDA, each weighting over the mean), so process start-up is paid once.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from flatmtl.workers import mtl
from flatmtl.workers.engine import (
    Collectives,
    DataParallelComm,
    RunningStatisticsAverager,
    ShardedMTLStep,
    ShardedOptimizer,
    launch,
    running_statistics,
    sharded_comm,
)
from flatmtl.workers.mtl.registry import methods
from tests.mtl.models import TinyHPS

pytestmark = pytest.mark.slow

WORLD = 2
STEPS = 4
LR = 0.1
NUM_TASKS = 3
MODES = ("ddp", "sharded", "zero3")
BN_STEPS = 3
SHARD_LOCAL_RANDOMNESS = {"graddrop"}
"""Draw their per-coordinate randomness per shard: same distribution as unsharded, not the same numbers."""

Combo = tuple[str, str, str]


def _combos() -> list[Combo]:
    """(weighting, aggregator, wrapper) triples that run every registered method once."""
    aggregated = [("ew", m.name, "none") for m in methods("aggregator")]
    wrapped = [("ew", "mgda", m.name) for m in methods("wrapper") if m.name != "none"]
    weighted = [(m.name, "mean", "none") for m in methods("weighting") if m.name != "ew"]
    return aggregated + wrapped + weighted


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, 6, dtype=torch.float64, generator=generator)
    return x, torch.randn(16, NUM_TASKS, dtype=torch.float64, generator=generator)


def _model(batch_norm: bool = False) -> TinyHPS:
    torch.manual_seed(0)
    return TinyHPS(NUM_TASKS, batch_norm=batch_norm).double()


def _flat(model: TinyHPS) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def _stats(model: TinyHPS) -> torch.Tensor:
    return torch.cat([b.reshape(-1) for b in running_statistics(model.modules())] or [torch.zeros(0)]).clone()


def _train(
    mode: str, combo: Combo, x: torch.Tensor, y: torch.Tensor, *, steps: int = STEPS, batch_norm: bool = False
) -> dict[str, torch.Tensor]:
    """After each SGD step: parameters [steps, P_total] and running statistics [steps, B] (B = 0 without
    BatchNorm); zero3 also reports the shared-parameter bytes a rank keeps between steps."""
    model = _model(batch_norm)
    weighting, aggregator, wrapper = combo
    kwargs = {"weighting": weighting, "aggregator": aggregator, "wrapper": wrapper, "seed": 3}
    full_parameters = nullcontext
    averager = RunningStatisticsAverager(model, Collectives()) if mode != "local" else None
    if mode in ("sharded", "zero3"):
        comm = sharded_comm(model.shared_parameters(), Collectives())
        step = ShardedMTLStep.from_model(model, comm=comm, partition_parameters=mode == "zero3", **kwargs)
        heads = [p for head in model.task_parameters() for p in head]
        optimizer = ShardedOptimizer(
            step.shared, [*heads, *step.parameters()], torch.optim.SGD, partition=step.partition, lr=LR
        )
        full_parameters = step.full_parameters
    else:
        comm = DataParallelComm(Collectives()) if mode == "ddp" else None
        step = mtl.MTLStep.from_model(model, comm=comm, **kwargs)
        optimizer = torch.optim.SGD([*model.parameters(), *step.parameters()], lr=LR)
    trajectory, statistics = [], []
    for _ in range(steps):
        step(lambda: model.task_losses(x, y))
        if averager is not None:
            averager()
        optimizer.step()
        optimizer.zero_grad()
        with full_parameters():
            trajectory.append(_flat(model))
        statistics.append(_stats(model))
    result = {"parameters": torch.stack(trajectory), "statistics": torch.stack(statistics)}
    if mode == "zero3":
        assert isinstance(step, ShardedMTLStep) and step.partition is not None
        result["persistent_bytes"] = torch.tensor(step.partition.persistent_bytes())
        result["shard_bytes"] = torch.tensor(step.shared.layout.shard_numel * 8)
    return result


def _rank_main(rank: int, world: int, out: str, combos: list[Combo]) -> None:
    x, y = _data()
    xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
    results = {(*combo, mode): _train(mode, combo, xs, ys) for combo in combos for mode in MODES}
    batch_norm = {mode: _train(mode, ("ew", "mean", "none"), xs, ys, steps=BN_STEPS, batch_norm=True) for mode in MODES}
    model = _model()
    step = ShardedMTLStep.from_model(model, comm=sharded_comm(model.shared_parameters(), Collectives()), seed=5)
    oracle_direction = _sharded_direction(step)
    payload = {"trajectories": results, "batch_norm": batch_norm, "direction": oracle_direction}
    torch.save(payload, Path(out) / f"rank{rank}.pt")


def _sharded_direction(step: ShardedMTLStep) -> torch.Tensor:
    """Gathered SPSA direction drawn through the sharded oracle's random_direction."""
    from flatmtl.workers.engine.sharded_mtl_step import ShardedOracle

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
    required = {("ew", a, "none") for a in ("mean", "mgda", "pcgrad")} | {("ew", "mgda", w) for w in ("fmtl", "samo")}
    assert required <= set(combos)
    x, y = _data()
    for combo in combos:
        local = _train("local", combo, x, y)["parameters"]
        label = "+".join(combo)
        assert not torch.equal(local[-1], _flat(_model())), f"{label}: the run did not move the parameters"
        runs_by_mode = {mode: [r["trajectories"][(*combo, mode)]["parameters"] for r in ranks] for mode in MODES}
        for mode, per_rank in runs_by_mode.items():
            for other in range(1, WORLD):
                assert torch.equal(per_rank[0], per_rank[other]), f"{label}: {mode} ranks disagree"
        ddp = runs_by_mode["ddp"][0]
        torch.testing.assert_close(ddp, local, rtol=0, atol=1e-6, msg=lambda m, label=label: f"{label} DDP: {m}")
        if combo[1] not in SHARD_LOCAL_RANDOMNESS:
            for mode in ("sharded", "zero3"):
                torch.testing.assert_close(
                    runs_by_mode[mode][0], ddp, rtol=0, atol=1e-5, msg=lambda m, s=f"{label} {mode}": f"{s}: {m}"
                )


def test_zero3_keeps_only_the_shard_between_steps(runs) -> None:
    combos, ranks = runs
    for rank in ranks:
        for combo in combos:
            result = rank["trajectories"][(*combo, "zero3")]
            assert int(result["persistent_bytes"]) == int(result["shard_bytes"])
    full = sum(p.numel() for p in _model().shared_parameters()) * 8
    assert int(ranks[0]["trajectories"][combos[0] + ("zero3",)]["shard_bytes"]) == -(-full // (8 * WORLD)) * 8


def test_batch_norm_statistics_agree_over_ranks_and_their_mean_is_the_one_process_mean(runs) -> None:
    _, ranks = runs
    x, y = _data()
    for mode in MODES:
        per_rank = [r["batch_norm"][mode] for r in ranks]
        for other in range(1, WORLD):
            assert torch.equal(per_rank[0]["statistics"], per_rank[other]["statistics"]), mode
            assert torch.equal(per_rank[0]["parameters"], per_rank[other]["parameters"]), mode
    # after one step from the same parameters: the EMA of the batch means is linear, so the rank average of
    # the running mean is the one-process running mean; the running variance is the rank mean of the
    # per-rank unbiased batch variances, which here differs from the one-process one
    model = _model(batch_norm=True)
    norm = model.trunk[1]
    with torch.no_grad():
        hidden = [model.trunk[0](part) for part in x.chunk(WORLD)]
    hidden_size = norm.num_features
    momentum = norm.momentum
    variances = torch.stack([h.var(dim=0, unbiased=True) for h in hidden]).mean(0)
    expected_var = (1 - momentum) * torch.ones(hidden_size, dtype=torch.float64) + momentum * variances
    local = _train("local", ("ew", "mean", "none"), x, y, steps=1, batch_norm=True)["statistics"][0]
    ddp = ranks[0]["batch_norm"]["ddp"]["statistics"][0]
    torch.testing.assert_close(ddp[:hidden_size], local[:hidden_size], rtol=0, atol=1e-12)
    torch.testing.assert_close(ddp[hidden_size:], expected_var, rtol=0, atol=1e-12)
    assert not torch.allclose(hidden[0].mean(0), hidden[1].mean(0)), "the ranks' batches must differ for this check"


def test_sharded_random_direction_is_the_unsharded_draw(runs) -> None:
    _, ranks = runs
    model = _model()
    numel = sum(p.numel() for p in model.shared_parameters())
    expected = torch.randn(numel, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for rank in ranks:
        assert torch.equal(rank["direction"], expected)
