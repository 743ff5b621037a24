"""A job's trials: grid and random search points, stable trial indices, specs with the point applied."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest

from flatmtl.service import artifacts
from flatmtl.service.specs.sweep import SweepSpec
from flatmtl.service.specs.train import TrainSpec
from flatmtl.workers.worker.plan import JobPaths, plan_job, search_points
from flatmtl.workers.worker.trials import TRIAL_ACTOR_CPUS, ClusterTooSmallError, check_fits

BASE: dict[str, Any] = {
    "problem": "multi_digits",
    "model": "mlp",
    "method": {"wrapper": {"name": "samo"}},
    "epochs": 2,
    "seed": 11,
    "processes": 2,
}


def sweep(**fields: Any) -> dict[str, Any]:
    document = {"kind": "sweep", "base": BASE, "metric": "test/mean/accuracy", "mode": "max"}
    document.update(fields)
    return SweepSpec.model_validate(document).model_dump(mode="json")


def test_grid_runs_every_point_once_with_its_values_in_the_trial_spec(tmp_path: Path) -> None:
    rhos, alphas = [0.001, 0.01, 0.1], [0.2, 0.8]
    document = sweep(
        space={"wrapper.rho": {"type": "grid", "values": rhos}, "wrapper.alpha": {"type": "grid", "values": alphas}}
    )
    plan = plan_job(7, document, tmp_path)
    seen = {(t.config["method.wrapper.hparams.rho"], t.config["method.wrapper.hparams.alpha"]) for t in plan.trials}
    assert seen == set(itertools.product(rhos, alphas)) and len(plan.trials) == len(rhos) * len(alphas)
    assert [t.index for t in plan.trials] == list(range(len(plan.trials)))
    for trial in plan.trials:
        hparams = trial.spec.method.wrapper.hparams
        assert (hparams["rho"], hparams["alpha"]) == (
            trial.config["method.wrapper.hparams.rho"],
            trial.config["method.wrapper.hparams.alpha"],
        )
        assert trial.spec.processes == 2 and trial.spec.seed == BASE["seed"]
        assert trial.run_dir == JobPaths(tmp_path, 7).trial(trial.index)
    assert len({t.run_dir for t in plan.trials}) == len(plan.trials)


def test_random_search_is_the_same_in_every_attempt_and_stays_in_its_domains(tmp_path: Path) -> None:
    space = {
        "wrapper.rho": {"type": "loguniform", "low": 1e-4, "high": 1e-1},
        "wrapper.alpha": {"type": "uniform", "low": 0.1, "high": 0.9},
        "optimizer.lr": {"type": "choice", "values": [0.001, 0.003]},
    }
    document = sweep(space=space, search="random", num_trials=12)
    first, second = search_points(SweepSpec.model_validate(document)), search_points(SweepSpec.model_validate(document))
    assert first == second and len(first) == 12
    for point in first:
        assert 1e-4 <= point["method.wrapper.hparams.rho"] <= 1e-1
        assert 0.1 <= point["method.wrapper.hparams.alpha"] <= 0.9
        assert point["optimizer.lr"] in (0.001, 0.003)
    logs = [math.log10(p["method.wrapper.hparams.rho"]) for p in first]
    assert max(logs) - min(logs) > 1.0  # spread over decades, as a log-uniform draw is
    other = sweep(space=space, search="random", num_trials=12, base={**BASE, "seed": 12})
    assert search_points(SweepSpec.model_validate(other)) != first


def test_a_training_job_is_one_trial_in_the_run_directory(tmp_path: Path) -> None:
    document = TrainSpec.model_validate(BASE).model_dump(mode="json")
    plan = plan_job(3, document, tmp_path)
    assert plan.kind == "train" and len(plan.trials) == 1
    assert plan.trials[0].spec == TrainSpec.model_validate(BASE)
    paths = JobPaths(tmp_path, 3)
    assert plan.trials[0].run_dir == paths.run
    assert paths.log == artifacts.log_path(tmp_path, 3)  # the file the API tails


def test_trials_that_cannot_fit_the_cluster_are_refused_before_tune(tmp_path: Path) -> None:
    document = sweep(space={"wrapper.rho": {"type": "grid", "values": [0.01, 0.1]}})
    plan = plan_job(1, document, tmp_path)  # 2 processes x 1 CPU per trial
    with pytest.raises(ClusterTooSmallError, match=r"2 processes x 1 CPUs.*1 CPUs"):
        check_fits(plan, {"CPU": 1.0})
    assert check_fits(plan, {"CPU": 2 + TRIAL_ACTOR_CPUS}) == 1
    assert check_fits(plan, {"CPU": 9.0}) == math.floor(9.0 / (2 + TRIAL_ACTOR_CPUS))
    limited = sweep(space={"wrapper.rho": {"type": "grid", "values": [0.01, 0.1]}}, max_concurrent_trials=2)
    assert check_fits(plan_job(1, limited, tmp_path), {"CPU": 64.0}) == 2


def test_a_training_job_takes_its_specs_resources_and_a_gpu_request_fails_on_a_cpu_cluster(tmp_path: Path) -> None:
    document = TrainSpec.model_validate({**BASE, "resources": {"cpus": 1.5, "gpus": 1}}).model_dump(mode="json")
    plan = plan_job(4, document, tmp_path)
    assert plan.resources == {"cpus": 1.5, "gpus": 1.0} and plan.cpus_per_trial() == 3.0
    with pytest.raises(ClusterTooSmallError, match=r"and 2 GPUs; the Ray cluster has 16 CPUs and 0 GPUs"):
        check_fits(plan, {"CPU": 16.0})
    assert check_fits(plan, {"CPU": 16.0, "GPU": 4.0}) == 2  # two trials of 2 processes x 1 GPU


def test_a_sweep_reserves_its_base_resources_unless_it_names_its_own(tmp_path: Path) -> None:
    space = {"wrapper.rho": {"type": "grid", "values": [0.01]}}
    based = sweep(space=space, base={**BASE, "resources": {"cpus": 2}})
    assert plan_job(5, based, tmp_path).resources == {"cpus": 2.0, "gpus": 0.0}
    own = sweep(space=space, base={**BASE, "resources": {"cpus": 2}}, resources_per_trial={"cpus": 0.5})
    assert plan_job(5, own, tmp_path).resources == {"cpus": 0.5, "gpus": 0.0}
