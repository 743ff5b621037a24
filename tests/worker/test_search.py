"""A sweep spec as Ray Tune objects: PBT's settings and mutations, Optuna's seeded search, the param space Tune
resolves into each trial's own values, trial names, and PBT's checkpoint hand-over between trials."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from flatmtl.service.specs.sweep import SweepSpec
from flatmtl.service.specs.train import TrainSpec
from flatmtl.workers.training import RunDirectory, checkpoint
from flatmtl.workers.worker import lineage, search
from flatmtl.workers.worker.plan import plan_job
from tests.worker.cluster import require_ray

BASE: dict[str, Any] = {"problem": "multi_digits", "model": "mlp", "method": {"wrapper": "samo"}, "epochs": 4}
RHOS, ALPHAS = [0.001, 0.01], [0.25, 0.75]


def pbt_plan(tmp_path: Path, **scheduler: Any) -> Any:
    document = {
        "kind": "sweep",
        "base": BASE,
        "space": {
            "wrapper.rho": {"type": "grid", "values": RHOS},
            "wrapper.alpha": {"type": "grid", "values": ALPHAS},
        },
        "scheduler": {"name": "pbt", "perturbation_interval": 2, "quantile_fraction": 0.5, **scheduler},
        "metric": "test/mean/accuracy",
        "mode": "max",
    }
    return plan_job(1, SweepSpec.model_validate(document).model_dump(mode="json"), tmp_path)


@pytest.mark.slow
def test_a_pbt_spec_maps_to_population_based_training_with_its_settings(tmp_path: Path) -> None:
    require_ray()
    from ray.tune.schedulers import PopulationBasedTraining

    plan = pbt_plan(tmp_path, resample_probability=0.1, mutate=["wrapper.alpha"])
    scheduler = search.scheduler(plan)
    assert isinstance(scheduler, PopulationBasedTraining)
    assert scheduler._time_attr == "epoch" and scheduler._perturbation_interval == 2
    assert (scheduler._quantile_fraction, scheduler._resample_probability) == (0.5, 0.1)
    assert scheduler._hyperparam_mutations == {"method.wrapper.hparams.alpha": ALPHAS}
    assert search.config_paths(plan.sweep) == ["method.wrapper.hparams.alpha"]


def test_pbt_perturbations_stay_inside_a_range() -> None:
    clip = search.ClipToSpace({"alpha": (0.0, 1.0)})
    assert clip({"alpha": 0.9 * 1.2, "rho": 5.0}) == {"alpha": 1.0, "rho": 5.0}
    assert clip({"alpha": -0.1})["alpha"] == 0.0 and clip({"alpha": 0.5})["alpha"] == 0.5


@pytest.mark.slow
def test_tune_resolves_each_trial_to_its_own_planned_values(tmp_path: Path) -> None:
    require_ray()
    from ray.tune.search.variant_generator import generate_variants

    plan = pbt_plan(tmp_path)
    resolved = [config for _, config in generate_variants(search.param_space(plan, [0, 1, 2, 3]))]
    assert sorted(config["trial_index"] for config in resolved) == [0, 1, 2, 3]
    for config in resolved:
        planned = plan.trials[config["trial_index"]].config
        assert {path: config[path] for path in planned} == planned


def test_a_requeued_pbt_trial_starts_from_the_values_its_run_trained_with(tmp_path: Path) -> None:
    plan = pbt_plan(tmp_path)
    trial = plan.trials[1]
    trained = trial.spec.model_dump(mode="json")
    trained["method"]["wrapper"]["hparams"]["alpha"] = 0.6
    trial.run_dir.mkdir(parents=True)
    (trial.run_dir / "config.json").write_text(json.dumps(trained))
    paths = ["method.wrapper.hparams.alpha", "method.wrapper.hparams.rho"]
    assert search.current_values(trial.run_dir, paths, trial.config) == {**trial.config, paths[0]: 0.6}
    assert search.current_values(plan.trials[0].run_dir, paths, plan.trials[0].config) == plan.trials[0].config


@pytest.mark.slow
def test_an_optuna_sweep_searches_the_space_with_a_seeded_sampler(tmp_path: Path) -> None:
    require_ray()
    from ray.tune.search.optuna import OptunaSearch

    document = {
        "kind": "sweep",
        "base": {**BASE, "seed": 3},
        "space": {
            "wrapper.rho": {"type": "loguniform", "low": 1e-4, "high": 0.1},
            "wrapper.alpha": {"type": "uniform", "low": 0.0, "high": 1.0},
            "optimizer.name": {"type": "choice", "values": ["adam", "sgd"]},
        },
        "search": "optuna",
        "num_trials": 5,
        "metric": "test/mean/accuracy",
        "mode": "max",
    }
    plan = plan_job(2, SweepSpec.model_validate(document).model_dump(mode="json"), tmp_path)
    assert len(plan.trials) == 5 and all(trial.config == {} for trial in plan.trials)
    space = search.param_space(plan, [0, 1, 2, 3, 4])
    assert set(space) == {"method.wrapper.hparams.rho", "method.wrapper.hparams.alpha", "optimizer.name"}

    def proposals() -> list[dict[str, Any]]:
        searcher = search.search_algorithm(plan)
        assert isinstance(searcher, OptunaSearch)
        assert searcher.set_search_properties("test/mean/accuracy", "max", space)
        return [searcher.suggest(f"t{i}") for i in range(3)]

    first = proposals()
    assert first == proposals()  # seeded by the base spec's seed
    for config in first:
        assert 1e-4 <= config["method.wrapper.hparams.rho"] <= 0.1
        assert 0.0 <= config["method.wrapper.hparams.alpha"] <= 1.0
        assert config["optimizer.name"] in ("adam", "sgd")
    assert search.config_paths(plan.sweep) == sorted(space)


class _Trial:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config


def test_trial_names_keep_planned_indices_and_number_optuna_trials_in_creation_order() -> None:
    namer = search.TrialNamer([1, 3, 4])
    assert namer(_Trial({"trial_index": 3})) == "trial-003"
    # Tune deep-copies the namer for each trial an Optuna search creates: the count survives the copies
    assert [copy.deepcopy(namer)(_Trial({})) for _ in range(3)] == ["trial-001", "trial-003", "trial-004"]
    assert search.trial_index("trial-004") == 4
    with pytest.raises(ValueError, match="TrialNamer"):
        search.trial_index("run_trial_abc")


def test_a_cloned_checkpoint_is_adopted_under_the_new_spec_and_nothing_else_may_differ(tmp_path: Path) -> None:
    mutated = ["method.wrapper.hparams.alpha"]
    donor_spec = TrainSpec.model_validate({**BASE, "method": {"wrapper": {"name": "samo", "hparams": {"alpha": 0.25}}}})
    reference = tmp_path / "tune" / "checkpoint"
    lineage.export(reference, index=0, epoch=2, path="bucket/jobs/1/trial-000/epoch_0002")
    assert lineage.origin(reference) == {"trial_index": 0, "epoch": 2, "path": "bucket/jobs/1/trial-000/epoch_0002"}

    perturbed = donor_spec.model_dump(mode="json")
    perturbed["method"]["wrapper"]["hparams"]["alpha"] = 0.3
    spec = TrainSpec.model_validate(perturbed)
    for name, adopter, allowed in (
        ("clone", spec, True),
        ("other", TrainSpec.model_validate({**perturbed, "seed": 9}), False),
    ):
        run = RunDirectory(tmp_path / name)
        run.create()
        checkpoint.save(run.latest, {"spec": donor_spec.model_dump(mode="json"), "model": {"w": torch.arange(3.0)}})
        if not allowed:
            with pytest.raises(lineage.LineageError, match="more than the mutated fields"):
                lineage.relabel(run, adopter, mutated)
            continue
        lineage.relabel(run, adopter, mutated)
        adopted = checkpoint.load(run.latest)
        assert adopted["spec"] == spec.model_dump(mode="json")
        assert torch.equal(adopted["model"]["w"], torch.arange(3.0))
