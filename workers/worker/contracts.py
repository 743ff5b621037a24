"""What the worker's modules hand each other: a planned trial, the payload a trial receives across Ray, the
configuration a rank receives, the sink a sweep reports to, and the names they agree on.

A leaf: it imports no other worker module, so ``trials`` (the driver), ``ranks`` (inside Ray Train),
``callbacks`` (Tune's side) and ``points`` (the stored metrics) all depend on it and not on each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from flatmtl.service.specs.train import TrainSpec
    from flatmtl.workers.training import RunOptions

TELEMETRY_KEY = "flatmtl_telemetry"
"""Result key of rank 0's last-step losses and Gram matrix (read by the driver, never a metric)."""

PLACEMENT_GROUP_FILE = ".ray_placement_group"
"""Written by rank 0 into the run directory: the id of the placement group holding the trial's Train workers."""


class TrialSink(Protocol):
    """Where the driver sends what the trials do (the worker writes it to the database)."""

    def trial_started(self, index: int) -> None: ...

    def trial_result(self, index: int, result: dict[str, Any]) -> None: ...

    def trial_ended(self, index: int, error: str | None) -> None: ...

    def should_stop(self) -> bool: ...


@dataclass(frozen=True)
class TrialPlan:
    """One training run of a job: ``config`` is the point of the search space (dotted path -> value)."""

    index: int
    config: dict[str, Any]
    spec: TrainSpec
    run_dir: Path


@dataclass(frozen=True)
class TrialPayload:
    """Everything a Tune trial function needs besides its Tune config; the same for every trial of a run.

    ``config_paths``: the spec fields a trial reads from its Tune config (Optuna's proposals, PBT's mutations)
    on top of ``base``, the sweep's base spec; empty for a plan whose trials are fixed.
    ``cpus``/``gpus``: per rank. ``storage``: Ray Train's storage path for the trials' runs.
    """

    trials: Mapping[int, TrialPlan]
    base: TrainSpec | None
    config_paths: tuple[str, ...]
    search: str
    pbt: bool
    options: RunOptions
    cpus: float
    gpus: float
    attempt: int
    storage: str
    collective_timeout_s: float


@dataclass(frozen=True)
class RankConfig:
    """What every rank of a trial's Ray Train run trains: ``spec`` into ``run_dir``.

    ``resume``: a checkpoint is there to continue from. ``replay``: report a resumed run's restored epochs too.
    """

    spec: TrainSpec
    run_dir: Path
    options: RunOptions
    resume: bool
    replay: bool
