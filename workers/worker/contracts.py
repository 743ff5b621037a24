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

CHECKPOINT_KEY = "flatmtl_checkpoint"
"""Result key of the storage path of the checkpoint that holds the run as of this report (never a metric)."""

FAILURE_KEY = "flatmtl_failure"
"""Result key of a run that failed: the training error's details (its FAILED summary is in the checkpoint)."""

PLACEMENT_GROUP_NAMESPACE = "flatmtl-placement-groups"
"""Ray internal KV namespace where rank 0 records the placement group that holds its trial's Train workers."""


class TrialSink(Protocol):
    """Where the driver sends what the trials do (the worker writes it to the database)."""

    def trial_started(self, index: int) -> None: ...

    def trial_result(self, index: int, result: dict[str, Any]) -> None: ...

    def trial_ended(self, index: int, error: str | None, *, finished: bool = False) -> None: ...

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
    ``cpus``/``gpus``: per rank. ``storage``: where the trials' Train runs and the Tune experiment persist (a
    ``storage.JobStorage``; this leaf imports no other worker module).
    ``train_max_failures``: restarts of a trial's worker group (a lost rank or node), each from its last checkpoint.
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
    job_id: int
    storage: Any
    collective_timeout_s: float
    train_max_failures: int
    working_dir: str | None = None
    """The job's shipped code, as Ray's runtime_env ``working_dir`` of every rank; None without code."""


@dataclass(frozen=True)
class RankConfig:
    """What every rank of a trial's Ray Train run trains: ``spec``, in a run directory of its own node.

    The run starts from Ray Train's checkpoint when it restores one (a restarted worker group, or an earlier
    attempt's run of the same name), else from ``adopt`` (a PBT clone's checkpoint, relabelled with ``spec``,
    which may differ from the checkpoint's in the ``mutable`` fields only), else from scratch.
    ``discard_other_spec``: a restored checkpoint trained on other values is ignored (Optuna's re-proposals).
    ``replay``: report a resumed run's restored epochs too. ``placement_group_key``: where rank 0 records its
    placement group (``PLACEMENT_GROUP_NAMESPACE``) so the driver can release it.
    """

    spec: TrainSpec
    options: RunOptions
    placement_group_key: str
    adopt: Any = None
    mutable: tuple[str, ...] = ()
    discard_other_spec: bool = False
    replay: bool = True
