"""Each claim's verdict follows from the numbers: claims analyzed on constructed run records whose outcome is
known by construction (no training), plus the measurement helpers against closed forms."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from workers.reproduce import design
from workers.reproduce.claims import conflict, flat_methods, optimizers, random_weighting, sensitivity, stl_mtl, toy
from workers.reproduce.claims.base import Context
from workers.reproduce.runs import Results, RunRecord, RunRequest, merge, run_key
from workers.reproduce.scale import QUICK
from workers.reproduce.verdict import NOT, PARTLY, REPRODUCED

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


def test_sensitivity_claim_compares_ranges_with_seed_noise(tmp_path: Path) -> None:
    ctx = context(tmp_path, fmtl_rhos=(0.01, 0.05, 0.2), samo_rhos=(1e-4, 1e-3, 1e-2), samo_alphas=(0.1, 0.5, 0.9))

    def outcome(spec: dict[str, Any]) -> Outcome:
        hparams = spec["method"]["wrapper"]["hparams"]
        noise = 0.5 * (spec["seed"] - 1)  # default settings: std 0.5 over seeds -> allowed range 1.5
        if wrapper(spec) == "fmtl":
            return accuracy(70.0 + noise + 10 * hparams["rho_shared"])  # range 1.9 over rho > 0
        if wrapper(spec) == "samo":
            return accuracy(70.0 + noise + 100 * hparams["rho"] + hparams["alpha"])  # rho range 0.99, alpha 0.8
        return accuracy(50.0)

    result = sensitivity.analyze(ctx, fake(sensitivity.requests(ctx), outcome))
    assert [c.holds for c in result.checks] == [False, True, True]
    assert result.verdict == PARTLY
    assert result.numbers["F-CAGrad: rho"]["allowed_range_points"] == pytest.approx(1.5)


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
