"""Each claim's verdict follows from the numbers: claims analyzed on constructed run records whose outcome is
known by construction (no training), plus the measurement helpers against closed forms."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from flatmtl.service.specs.sweep import SweepSpec
from flatmtl.workers.reproduce import design
from flatmtl.workers.reproduce.claims import (
    conflict,
    flat_methods,
    optimizers,
    random_weighting,
    sensitivity,
    stl_mtl,
    toy,
)
from flatmtl.workers.reproduce.claims.base import Context
from flatmtl.workers.reproduce.runs import Results, RunRecord, RunRequest, merge, run_key
from flatmtl.workers.reproduce.scale import QUICK
from flatmtl.workers.reproduce.sweeps import SweepOutcome, Trial
from flatmtl.workers.reproduce.verdict import NOT, PARTLY, REPRODUCED
from flatmtl.workers.worker.plan import search_points, trial_spec

Outcome = tuple[float, float, str, list[float]]
"""(top-left accuracy %, bottom-right accuracy %, status, per-step conflict indicators)."""


def context(tmp_path: Path, **changes: Any) -> Context:
    return Context(
        scale=replace(QUICK, seeds=(0, 1, 2), **changes), figures=tmp_path, mnist_dir=None, echo=lambda _: None
    )


def fake(requests: list[RunRequest], outcome: Callable[[dict[str, Any]], Outcome]) -> Results:
    records = {}
    for request in merge(requests):
        top, bottom, status, conflicts = outcome(request.spec)
        epoch = {"test/top_left/accuracy": top / 100, "test/bottom_right/accuracy": bottom / 100}
        steps = [{"conflict_ratio": c, "step_seconds": 0.1} for c in conflicts]
        records[request.key] = RunRecord(request.key, Path("unused"), request.spec, status, [epoch], steps, 0.0)
    return Results(records)


def wrapper(spec: dict[str, Any]) -> str:
    return spec["method"]["wrapper"]["name"]


def accuracy(value: float) -> Outcome:
    return value, value, "SUCCEEDED", []


def test_conflict_claim_reproduced_when_erm_rises_and_fmtl_falls(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    rising, falling = [0.0] * 10 + [1.0] * 10, [1.0] * 10 + [0.0] * 10

    def outcome(spec: dict[str, Any]) -> Outcome:
        return 50.0, 50.0, "SUCCEEDED", falling if wrapper(spec) == "fmtl" else rising

    result = conflict.analyze(ctx, fake(conflict.requests(ctx), outcome))
    assert result.verdict == REPRODUCED
    assert result.numbers["last_window"]["ERM"]["mean"] == 1.0
    assert (tmp_path / "claim1_conflict.png").stat().st_size > 0

    swapped = conflict.analyze(
        ctx, fake(conflict.requests(ctx), lambda s: (*outcome(s)[:3], rising if wrapper(s) == "fmtl" else falling))
    )
    assert swapped.verdict == NOT and not any(check.holds for check in swapped.checks)


def test_flat_methods_claim_counts_paired_gains(tmp_path: Path) -> None:
    ctx = context(tmp_path, aggregators=("mgda", "pcgrad"))
    requests = flat_methods.requests(ctx)

    def gains(f_gain: float, samo_gain: float) -> Callable[[dict[str, Any]], Outcome]:
        def outcome(spec: dict[str, Any]) -> Outcome:
            base = 60.0 + 5 * spec["seed"]  # seeds differ a lot; the pairing removes it
            return accuracy(base + {"none": 0.0, "fmtl": f_gain, "samo": samo_gain}[wrapper(spec)])

        return outcome

    assert flat_methods.analyze(ctx, fake(requests, gains(1.0, 0.5))).verdict == REPRODUCED
    half = flat_methods.analyze(ctx, fake(requests, gains(1.0, -0.5)))
    assert half.verdict == PARTLY and [c.holds for c in half.checks] == [True, False, True, False]
    gain = half.numbers["F-MGDA"]["gain_over_base"]
    assert gain["mean"] == pytest.approx(1.0) and gain["std"] == pytest.approx(0.0)
    assert flat_methods.analyze(ctx, fake(requests, gains(-1.0, -0.5))).verdict == NOT


def test_a_diverged_run_never_counts_as_a_gain(tmp_path: Path) -> None:
    ctx = context(tmp_path, aggregators=("mgda",))

    def outcome(spec: dict[str, Any]) -> Outcome:
        if wrapper(spec) == "fmtl" and spec["seed"] == 1:
            return math.nan, math.nan, "FAILED", []
        return accuracy(70.0 if wrapper(spec) == "none" else 90.0)

    result = flat_methods.analyze(ctx, fake(flat_methods.requests(ctx), outcome))
    assert [c.holds for c in result.checks] == [False, True]
    assert result.numbers["F-MGDA"]["failed_runs"] == 1


def test_random_weighting_claim_asks_every_distribution_and_stability(tmp_path: Path) -> None:
    ctx = context(tmp_path, distributions=("normal", "uniform"))

    def outcome(spec: dict[str, Any]) -> Outcome:
        weighting = spec["method"]["weighting"]
        if weighting["name"] == "ew":
            return accuracy(70.0)
        spread = {"normal": 0.1, "uniform": 2.0}[weighting["hparams"]["distribution"]]
        return accuracy(71.0 + spread * (spec["seed"] - 1))

    result = random_weighting.analyze(ctx, fake(random_weighting.requests(ctx), outcome))
    assert [c.holds for c in result.checks] == [True, True, True]
    assert result.verdict == REPRODUCED


def test_optimizer_claim_picks_each_best_learning_rate_and_ranks_divergence_last(tmp_path: Path) -> None:
    ctx = context(tmp_path, optimizer_methods=("ew", "pcgrad"), adam_lrs=(1e-3, 3e-3), sgd_lrs=(0.01, 0.1))

    def outcome(spec: dict[str, Any]) -> Outcome:
        optim = spec["optimizer"]
        if optim["name"] == "sgd":
            return (math.nan, math.nan, "FAILED", []) if optim["lr"] == 0.1 else accuracy(60.0)
        return accuracy(75.0 if optim["lr"] == 3e-3 else 70.0)

    result = optimizers.analyze(ctx, fake(optimizers.requests(ctx), outcome))
    assert result.numbers["EW"]["adam"]["best_lr"] == 3e-3
    assert result.numbers["EW"]["sgd"]["best_lr"] == 0.01
    assert result.numbers["optimizer_effect_points"] == pytest.approx(15.0)
    assert result.verdict == REPRODUCED


def fake_sweeps(
    context: Context, value: Callable[[dict[str, Any]], float], failed: dict[str, Any] | None = None
) -> dict:
    """Sweep outcomes as the API reports them: every grid point's trial with the given average accuracy (%), the
    trial whose config contains ``failed`` ended failed."""
    outcomes = {}
    for job_id, request in enumerate(sensitivity.sweeps(context), start=1):
        trials = []
        for index, config in enumerate(search_points(SweepSpec.model_validate(request.spec))):
            hparams = {path.rsplit(".", 1)[1]: v for path, v in config.items()}
            lost = failed is not None and failed.items() <= hparams.items()
            last = {f"test/{task}/accuracy": value(hparams) / 100 for task in ("top_left", "bottom_right")}
            trials.append(Trial(index, config, "failed" if lost else "succeeded", None, last, Path("unused"), {}))
        outcomes[request.key] = SweepOutcome(request.key, request.spec, job_id, "succeeded", None, 1.0, False, trials)
    return outcomes


def noisy_defaults(spec: dict[str, Any]) -> Outcome:
    """The engine runs: the defaults with std 0.5 over seeds (allowed range 1.5), the plain aggregators at 50%."""
    if wrapper(spec) == "none":
        return accuracy(50.0)
    return accuracy(70.0 + 0.5 * (spec["seed"] - 1))


def sensitivity_context(tmp_path: Path) -> Context:
    return context(tmp_path, fmtl_rhos=(0.01, 0.05, 0.2), samo_rhos=(1e-4, 1e-3, 1e-2), samo_alphas=(0.1, 0.5, 0.9))


@pytest.mark.parametrize(("diagonal_slope", "holds"), [(2.0, True), (10.0, False)])
def test_sensitivity_claim_reads_the_grids_cuts_against_seed_noise(
    tmp_path: Path, diagonal_slope: float, holds: bool
) -> None:
    ctx = sensitivity_context(tmp_path)

    def value(hp: dict[str, Any]) -> float:
        if "rho_shared" in hp:  # the diagonal (paper's tied radii) ranges over 0.19 * slope; off it, much more
            return 70.0 + 50 * (hp["rho_shared"] - hp["rho_task"]) + diagonal_slope * hp["rho_task"]
        return 70.0 + 100 * hp["rho"] + hp["alpha"]  # rho range 0.99 at every alpha, alpha range 0.8 at every rho

    results = fake(sensitivity.requests(ctx), noisy_defaults)
    results.sweeps = fake_sweeps(ctx, value)
    result = sensitivity.analyze(ctx, results)
    assert [c.holds for c in result.checks] == [holds, True, True, True]
    assert result.verdict == (REPRODUCED if holds else PARTLY)
    fmtl = result.numbers["F-CAGrad"]
    assert fmtl["allowed_range_points"] == pytest.approx(1.5)
    assert fmtl["ranges_points"]["diagonal (rho_shared = rho_task)"] == pytest.approx(0.19 * diagonal_slope)
    assert fmtl["average_accuracy"][0][2] == pytest.approx(70.0 + 50 * (0.01 - 0.2) + diagonal_slope * 0.2)
    samo = result.numbers["SAMO-FairGrad"]["ranges_points"]
    assert samo["alpha at rho 1e-3"] == pytest.approx(0.8) and samo["rho at alpha 0.5"] == pytest.approx(0.99)
    assert samo["alpha, mean over rhos"] == pytest.approx(0.8) and samo["rho, mean over alphas"] == pytest.approx(0.99)


def test_a_failed_trial_is_never_left_out_of_a_range(tmp_path: Path) -> None:
    ctx = sensitivity_context(tmp_path)
    results = fake(sensitivity.requests(ctx), noisy_defaults)
    results.sweeps = fake_sweeps(ctx, lambda hp: 70.0 + hp.get("alpha", 0.0), failed={"rho": 1e-2, "alpha": 0.5})
    result = sensitivity.analyze(ctx, results)
    assert [c.holds for c in result.checks] == [True, True, False, False]  # rho ranges are NaN: cannot hold
    assert math.isnan(result.numbers["SAMO-FairGrad"]["average_accuracy"][2][1])
    assert "| 0.01 | 70.10 | **failed** | 70.90 |" in result.tables[1]


def test_a_sweep_trial_at_the_default_is_the_engine_run_of_the_same_spec(tmp_path: Path) -> None:
    """The sweeps' base is the engine's spec: the trial at each default point trains exactly the seed-0 run claim 2
    trains (same key), which the report compares."""
    ctx = sensitivity_context(tmp_path)
    for grid in sensitivity.grids(ctx.scale).values():
        sweep = SweepSpec.model_validate(grid.request(ctx.scale).spec)
        assert sweep.trial_count() == len(grid.rows) * len(grid.columns)
        assert sweep.max_concurrent_trials == ctx.scale.workers
        default = design.spec(ctx.scale, grid.default, ctx.scale.seeds[0])
        wanted = {f"method.wrapper.hparams.{k}": v for k, v in default["method"]["wrapper"]["hparams"].items()}
        trials = [trial_spec(sweep.base, config) for config in search_points(sweep) if config == wanted]
        assert len(trials) == 1 and run_key(trials[0].model_dump(mode="json")) == run_key(default)
    with pytest.raises(ValueError, match=re.escape("samo_alphas=[0.1, 0.9] must contain the default 0.5")):
        sensitivity.grids(replace(ctx.scale, samo_alphas=(0.1, 0.9)))


def test_equal_trainings_share_one_run_and_keep_epoch_checkpoints_if_asked() -> None:
    scale = QUICK
    implicit = design.spec(scale, design.aggregator_method("cagrad", "F"), 0)
    explicit = design.spec(scale, design.aggregator_method("cagrad", "F", **design.fmtl_radius(0.05)), 0)
    assert implicit["name"] == explicit["name"] and run_key(implicit) == run_key(explicit)
    renamed = {**implicit, "name": "other"}
    assert run_key(renamed) == run_key(implicit)
    assert run_key({**implicit, "seed": 1}) != run_key(implicit)
    merged = merge([RunRequest(implicit), RunRequest(renamed, keep_epoch_checkpoints=True), RunRequest(explicit)])
    assert len(merged) == 1 and merged[0].keep_epoch_checkpoints


def test_stl_and_mtl_pairs_follow_the_definitions() -> None:
    pairs = stl_mtl.pairs(samples=3, tasks=2)
    assert all(i // 2 == j // 2 and i != j for i, j in pairs["MTL"]) and len(pairs["MTL"]) == 3
    assert all(i % 2 == j % 2 and i // 2 != j // 2 for i, j in pairs["STL"]) and len(pairs["STL"]) == 6
    g = torch.tensor([1.0, -2.0, 0.5, 3.0])
    measured = stl_mtl.pair_measures(torch.stack([g, -g, 2 * g]), [(0, 1), (0, 2)])
    assert measured["cosine"] == pytest.approx([-1.0, 1.0])
    assert measured["magnitude"] == pytest.approx([1.0, 2 * 1 * 2 / (1 + 4)])
    assert measured["conflicting_share"] == pytest.approx([1.0, 0.0])


def test_toy_sharpness_is_the_hessian_spectral_norm() -> None:
    """At (-4, 0) f2's well has Hessian 4 I and f1 (quartic in x2) adds a small negative x1 curvature, so the
    spectral norm is 4; at the origin f1 is flat to fourth order and f2 is exp(-32)-small."""
    assert toy.sharpness(torch.tensor([-4.0, 0.0])) == pytest.approx(4.0, rel=1e-9)
    assert toy.sharpness(torch.tensor([0.0, 0.0])) < 1e-9
