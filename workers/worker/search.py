"""A sweep spec as Ray Tune objects: the scheduler (FIFO, ASHA, PBT), the search algorithm and the param space.

Grid and random search points are expanded by :mod:`flatmtl.workers.worker.plan`, so their Tune config is just the
trial's index. Two cases need values in the Tune config itself: Optuna proposes each trial's values (the
config holds every field of the space), and PBT perturbs the mutated fields between restarts (the config
holds those fields; the index is kept too but PBT overwrites it with the cloned trial's, so a trial's
identity is its name, set once when Tune creates it: see :class:`TrialNamer`).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from flatmtl.service.specs.sweep import Domain, SweepSpec
from flatmtl.workers.worker.plan import JobPlan

TRIAL_NAME = "trial-{index:03d}"


def trial_index(name: str) -> int:
    """The plan's trial index from a Tune trial name made by :class:`TrialNamer`."""
    prefix = TRIAL_NAME.split("{", 1)[0]
    if not name.startswith(prefix) or not name[len(prefix) :].isdigit():
        raise ValueError(f"trial name {name!r} was not made by TrialNamer")
    return int(name[len(prefix) :])


_CREATED: dict[str, int] = {}
"""Trials each namer has numbered, by namer key: Tune deep-copies the namer into every trial it creates from a
search algorithm, so the count cannot live on the namer itself (trials are all created in the driver process)."""


class TrialNamer:
    """Tune's ``trial_name_creator``: a trial created with a ``trial_index`` in its config keeps that index; an
    Optuna trial (no index in its config) takes the next of the indices still to run, in creation order."""

    def __init__(self, indices: list[int]) -> None:
        self.indices = list(indices)
        self.key = uuid.uuid4().hex

    def __call__(self, trial: Any) -> str:
        index = trial.config.get("trial_index")
        if index is None:
            created = _CREATED.get(self.key, 0)
            _CREATED[self.key] = created + 1
            index = self.indices[created]
        return TRIAL_NAME.format(index=index)


def config_paths(sweep: SweepSpec | None) -> list[str]:
    """The fields a trial reads from its Tune config rather than from the plan."""
    if sweep is None:
        return []
    if sweep.search == "optuna":
        return sorted(sweep.space)
    return sweep.mutated_paths()


def _tune_domain(domain: Domain) -> Any:
    from ray import tune

    if domain.type in ("grid", "choice"):
        return tune.choice(list(domain.values or []))
    assert domain.low is not None and domain.high is not None
    if domain.type == "uniform":
        return tune.uniform(domain.low, domain.high)
    return tune.loguniform(domain.low, domain.high)


def _mutation(domain: Domain) -> Any:
    """PBT's mutation of one field: a list (moved to a neighbouring value or resampled) or a range."""
    return list(domain.values or []) if domain.type in ("grid", "choice") else _tune_domain(domain)


class ClipToSpace:
    """PBT's ``custom_explore_fn``: a perturbed value (x0.8 or x1.2) is clipped back into its range, so a
    perturbation never makes a trial's spec invalid (``alpha`` past 1, say)."""

    def __init__(self, bounds: dict[str, tuple[float, float]]) -> None:
        self.bounds = bounds

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        clipped = dict(config)
        for path, (low, high) in self.bounds.items():
            if path in clipped:
                clipped[path] = min(max(float(clipped[path]), low), high)
        return clipped


def scheduler(plan: JobPlan) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    sweep = plan.sweep
    if sweep is None or sweep.scheduler.name == "fifo":
        return FIFOScheduler()
    config = sweep.scheduler
    if config.name == "asha":
        epochs = max(trial.spec.epochs for trial in plan.trials)
        return ASHAScheduler(
            time_attr="training_iteration",
            max_t=epochs,
            grace_period=min(config.grace_period, epochs),
            reduction_factor=config.reduction_factor,
        )
    mutated = sweep.mutated_paths()
    bounds = {
        path: (float(sweep.space[path].low or 0.0), float(sweep.space[path].high or 0.0))
        for path in mutated
        if sweep.space[path].type in ("uniform", "loguniform")
    }
    return PopulationBasedTraining(
        time_attr="epoch",
        perturbation_interval=config.perturbation_interval,
        hyperparam_mutations={path: _mutation(sweep.space[path]) for path in mutated},
        quantile_fraction=config.quantile_fraction,
        resample_probability=config.resample_probability,
        custom_explore_fn=ClipToSpace(bounds),
    )


def search_algorithm(plan: JobPlan) -> Any:
    """Optuna's TPE sampler seeded by the base spec's seed, else None (Tune's variant generator)."""
    sweep = plan.sweep
    if sweep is None or sweep.search != "optuna":
        return None
    from optuna.samplers import TPESampler
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(metric=sweep.metric, mode=sweep.mode, sampler=TPESampler(seed=sweep.base.seed))


def current_values(run_dir: Path, paths: list[str], planned: dict[str, Any]) -> dict[str, Any]:
    """The values of ``paths`` a trial trains with now: those of its run directory's spec when an earlier
    attempt left one (PBT may have changed them), else the planned ones."""
    config_file = run_dir / "config.json"
    if not config_file.exists():
        return {path: planned[path] for path in paths}
    document = json.loads(config_file.read_text())
    values: dict[str, Any] = {}
    for path in paths:
        node: Any = document
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        values[path] = planned[path] if node is None else node
    return values


def param_space(plan: JobPlan, indices: list[int]) -> dict[str, Any]:
    """Optuna: the space as Tune domains; otherwise a grid over the trial indices, plus (PBT) each trial's
    current values of the mutated fields, looked up by index."""
    from ray import tune

    sweep = plan.sweep
    if sweep is not None and sweep.search == "optuna":
        return {path: _tune_domain(domain) for path, domain in sorted(sweep.space.items())}
    space: dict[str, Any] = {"trial_index": tune.grid_search(indices)}
    mutated = sweep.mutated_paths() if sweep is not None else []
    if mutated:
        values = {i: current_values(plan.trials[i].run_dir, mutated, plan.trials[i].config) for i in indices}
        for path in mutated:
            space[path] = tune.sample_from(_Lookup(values, path))
    return space


class _Lookup:
    """``tune.sample_from`` of one field's value for the trial whose index Tune resolved first."""

    def __init__(self, values: dict[int, dict[str, Any]], path: str) -> None:
        self.values, self.path = values, path

    def __call__(self, config: Any) -> Any:
        return self.values[config["trial_index"]][self.path]
