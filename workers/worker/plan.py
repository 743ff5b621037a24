"""What a job runs: its trials (a training job is one trial), their specs, configs and run directories.

A sweep's trials are expanded here, not by Ray Tune's variant generator, so that trial ``i`` has the same
config and the same run directory in every attempt of the job: a requeued sweep resumes each unfinished
trial from its own checkpoint and keeps the finished ones. Grid search is the Cartesian product of the
grid domains (paths sorted, values in the given order); random search draws ``num_trials`` points from a
generator seeded by the base spec's seed. Tune then runs the trials by index (see ``flatmtl.workers.worker.search``).
Optuna's trials get their values from Optuna while the sweep runs; their plans hold the base spec until then.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flatmtl.service.specs.submission import parse_spec
from flatmtl.service.specs.sweep import Domain, SweepSpec, set_path
from flatmtl.service.specs.train import TrainSpec
from flatmtl.workers.worker.contracts import TrialPlan

SWEEP_STREAM = 0x5EE9
"""Second word of the random search's seed, so it never shares a stream with the training run's own seed."""


@dataclass(frozen=True)
class JobPlan:
    job_id: int
    kind: str
    trials: list[TrialPlan]
    sweep: SweepSpec | None = None
    resources: dict[str, float] = field(default_factory=lambda: {"cpus": 1.0, "gpus": 0.0})

    @property
    def processes(self) -> int:
        return max(trial.spec.processes for trial in self.trials)

    def cpus_per_trial(self) -> float:
        return self.processes * self.resources["cpus"]


class JobPaths:
    """Where a job's files go under the artifact directory (``flatmtl.service.artifacts``' layout): a training job's
    run in ``run/``, a sweep's trials in ``trials/NNN/``, Ray's own files in ``ray/``, the log in ``job.log``."""

    def __init__(self, artifact_root: Path, job_id: int) -> None:
        from flatmtl.service.artifacts import job_dir, log_path

        self.root = job_dir(artifact_root, job_id)
        self.log = log_path(artifact_root, job_id)
        self.run = self.root / "run"
        self.ray = self.root / "ray"

    def trial(self, index: int) -> Path:
        return self.root / "trials" / f"{index:03d}"


def sample(domain: Domain, rng: np.random.Generator) -> Any:
    """One draw from a random-search domain."""
    if domain.type == "choice":
        assert domain.values is not None
        return domain.values[int(rng.integers(len(domain.values)))]
    assert domain.low is not None and domain.high is not None
    if domain.type == "uniform":
        return float(rng.uniform(domain.low, domain.high))
    return float(math.exp(rng.uniform(math.log(domain.low), math.log(domain.high))))


def search_points(sweep: SweepSpec) -> list[dict[str, Any]]:
    """The sweep's trial configs in trial order; empty for Optuna, which proposes them while the sweep runs."""
    paths = sorted(sweep.space)
    if sweep.search == "optuna":
        return [{} for _ in range(sweep.trial_count())]
    if sweep.search == "grid":
        grids = [sweep.space[path].values or [] for path in paths]
        return [dict(zip(paths, values, strict=True)) for values in itertools.product(*grids)]
    rng = np.random.default_rng([sweep.base.seed, SWEEP_STREAM])
    return [{path: sample(sweep.space[path], rng) for path in paths} for _ in range(sweep.trial_count())]


def trial_spec(base: TrainSpec, config: dict[str, Any]) -> TrainSpec:
    document = copy.deepcopy(base.model_dump(mode="json"))
    for path, value in config.items():
        set_path(document, path, value)
    return TrainSpec.model_validate(document)


def plan_job(job_id: int, spec_document: dict[str, Any], artifact_root: Path) -> JobPlan:
    """The trials of the job whose stored (normalised) spec is ``spec_document``."""
    spec = parse_spec(spec_document)
    paths = JobPaths(artifact_root, job_id)
    if isinstance(spec, TrainSpec):
        return JobPlan(job_id, "train", [TrialPlan(0, {}, spec, paths.run)], resources=spec.resources.model_dump())
    trials = [
        TrialPlan(index, config, trial_spec(spec.base, config), paths.trial(index))
        for index, config in enumerate(search_points(spec))
    ]
    return JobPlan(job_id, "sweep", trials, sweep=spec, resources=spec.trial_resources().model_dump())
