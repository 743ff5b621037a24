"""What one scrape reads (:class:`Snapshot`), and the database as its source.

Workers already write their step metrics into the database's ``metrics`` table through the lease-fenced
queue, so the API reads the latest values of RUNNING jobs from there at scrape time, in a few aggregate
queries. Points of a sweep's trials count while the trial runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Float, case, cast, func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from flatmtl.service.db import Database
from flatmtl.service.models import JOB_STATES, Event, Job, Trial, utcnow
from flatmtl.service.models import Metric as MetricRow
from flatmtl.service.telemetry.names import POINT_PREFIX, POINT_STEP_SECONDS, QUEUE_WAIT_BUCKETS, STEP_SECONDS_BUCKETS


@dataclass(frozen=True)
class HistogramCounts:
    """A histogram read back from stored observations: cumulative counts at each upper bound."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    count: int
    total: float

    @classmethod
    def of(cls, values: Iterable[float], bounds: Sequence[float]) -> HistogramCounts:
        observed = list(values)
        cumulative = tuple(sum(1 for v in observed if v <= bound) for bound in bounds)
        return cls(tuple(bounds), cumulative, len(observed), math.fsum(observed))

    @classmethod
    def empty(cls, bounds: Sequence[float]) -> HistogramCounts:
        return cls(tuple(bounds), (0,) * len(bounds), 0, 0.0)

    def buckets(self) -> list[tuple[str, float]]:
        return [*((repr(float(b)), c) for b, c in zip(self.bounds, self.cumulative, strict=True)), ("+Inf", self.count)]


@dataclass(frozen=True)
class TrainingSeries:
    """The latest training points (``train/...`` name -> value) and step-time histogram of a training job
    (``trial`` None) or of one running trial of a sweep."""

    trial: int | None
    latest: Mapping[str, float]
    step_seconds: HistogramCounts


@dataclass(frozen=True)
class RunningJob:
    """A running job: a training job has one :class:`TrainingSeries`, a sweep one per running trial. ``owner``
    (who submitted it) decides who may see its series."""

    job_id: int
    attempt: int
    series: Sequence[TrainingSeries] = ()
    owner: str | None = None


@dataclass(frozen=True)
class Snapshot:
    """Everything the collector exports besides API latency, read at one scrape."""

    jobs_by_state: Mapping[str, int]
    queue_wait: HistogramCounts
    oldest_queued_age_seconds: float
    lease_expirations: int
    retries: int
    failures: int
    worker_heartbeat_age_seconds: Mapping[str, float]
    workers_alive: int
    running_jobs: Sequence[RunningJob] = field(default_factory=tuple)


SnapshotSource = Callable[[], Snapshot]


def _seconds_between(
    session: Session, start: ColumnElement[datetime], end: ColumnElement[datetime]
) -> ColumnElement[float]:
    """``end - start`` in seconds as a SQL expression (SQLite has no interval type)."""
    if session.get_bind().dialect.name == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return func.extract("epoch", end - start)


def _histogram_row(
    session: Session, values: ColumnElement[float], bounds: Sequence[float], *where: ColumnElement[bool]
) -> HistogramCounts:
    columns = [func.coalesce(func.sum(case((values <= bound, 1), else_=0)), 0) for bound in bounds]
    row = session.execute(
        select(*columns, func.count(values), func.coalesce(func.sum(values), 0.0)).where(*where)
    ).one()
    return HistogramCounts(tuple(bounds), tuple(int(c) for c in row[:-2]), int(row[-2]), float(row[-1]))


def database_snapshot(session: Session, *, now: datetime, lease_seconds: float) -> Snapshot:
    """The control plane and running jobs' latest training points, read in a few aggregate queries.

    A worker's last heartbeat is ``lease_expires_at - lease_seconds`` of the jobs it runs (each
    heartbeat extends the lease by ``lease_seconds``), so only busy workers are visible. Points of a
    sweep's trials count while the trial runs; finished trials are left to the API's history endpoints.
    """
    counts = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
    wait = _seconds_between(session, Job.created_at, Job.started_at)
    queue_wait = _histogram_row(session, cast(wait, Float), QUEUE_WAIT_BUCKETS, Job.started_at.is_not(None))
    oldest = session.scalar(select(func.min(Job.created_at)).where(Job.state == "queued"))
    events = dict(
        session.execute(
            select(Event.kind, func.count())
            .where(Event.kind.in_(("lease_expired", "retried", "failed")))
            .group_by(Event.kind)
        ).all()
    )
    running = session.execute(
        select(Job.id, Job.attempt, Job.lease_owner, Job.lease_expires_at, Job.created_by).where(Job.state == "running")
    ).all()
    heartbeats: dict[str, float] = {}
    for _, _, owner, expires, _ in running:
        if owner is not None and expires is not None:
            age = max((now - expires).total_seconds() + lease_seconds, 0.0)
            heartbeats[owner] = min(age, heartbeats.get(owner, math.inf))
    return Snapshot(
        jobs_by_state={state: int(counts.get(state, 0)) for state in JOB_STATES},
        queue_wait=queue_wait,
        oldest_queued_age_seconds=max((now - oldest).total_seconds(), 0.0) if oldest is not None else 0.0,
        lease_expirations=int(events.get("lease_expired", 0)),
        retries=int(events.get("retried", 0)),
        failures=int(events.get("failed", 0)),
        worker_heartbeat_age_seconds=heartbeats,
        workers_alive=sum(1 for age in heartbeats.values() if age < lease_seconds),
        running_jobs=_running_jobs(
            session,
            {job_id: attempt for job_id, attempt, *_ in running},
            {job_id: user for job_id, *_, user in running},
        ),
    )


def _running_jobs(session: Session, attempts: Mapping[int, int], owners: Mapping[int, str | None]) -> list[RunningJob]:
    """Running jobs with the series of their training run (training jobs) or running trials (sweeps)."""
    if not attempts:
        return []
    ids = list(attempts)
    kinds = dict(session.execute(select(Job.id, Job.kind).where(Job.id.in_(ids))).all())
    running_trial = (
        select(Trial.id)
        .where(Trial.job_id == MetricRow.job_id, Trial.trial_index == MetricRow.trial_index, Trial.state == "running")
        .exists()
    )
    current = (
        MetricRow.job_id.in_(ids),
        or_(MetricRow.trial_index.is_(None), running_trial),
        MetricRow.name.startswith(POINT_PREFIX, autoescape=True),
    )
    runs: dict[int, dict[int | None, dict[str, float]]] = {
        job_id: {None: {}} if kinds[job_id] == "train" else {} for job_id in ids
    }
    trials = session.execute(
        select(Trial.job_id, Trial.trial_index).where(Trial.job_id.in_(ids), Trial.state == "running")
    )
    for job_id, index in trials:
        if kinds[job_id] == "sweep":
            runs[job_id][index] = {}
    newest = (
        select(func.max(MetricRow.id)).where(*current).group_by(MetricRow.job_id, MetricRow.trial_index, MetricRow.name)
    )
    for job_id, trial, name, value in session.execute(
        select(MetricRow.job_id, MetricRow.trial_index, MetricRow.name, MetricRow.value).where(MetricRow.id.in_(newest))
    ):
        if trial in runs[job_id]:
            runs[job_id][trial][name] = math.nan if value is None else value  # NULL: the worker saw a non-finite value
    steps = _step_histograms(session, current)
    empty = HistogramCounts.empty(STEP_SECONDS_BUCKETS)
    return [
        RunningJob(
            job_id,
            attempts[job_id],
            [
                TrainingSeries(trial, latest, steps.get((job_id, trial), empty))
                for trial, latest in sorted(runs[job_id].items(), key=lambda item: -1 if item[0] is None else item[0])
            ],
            owners.get(job_id),
        )
        for job_id in ids
    ]


def _step_histograms(
    session: Session, where: Sequence[ColumnElement[bool]]
) -> dict[tuple[int, int | None], HistogramCounts]:
    """Step-time histograms of every (job, trial) the filter keeps, from the stored step times, in one query."""
    values = MetricRow.value
    columns = [func.coalesce(func.sum(case((values <= bound, 1), else_=0)), 0) for bound in STEP_SECONDS_BUCKETS]
    rows = session.execute(
        select(
            MetricRow.job_id, MetricRow.trial_index, *columns, func.count(values), func.coalesce(func.sum(values), 0.0)
        )
        .where(*where, MetricRow.name == POINT_STEP_SECONDS)
        .group_by(MetricRow.job_id, MetricRow.trial_index)
    ).all()
    return {
        (row[0], row[1]): HistogramCounts(
            STEP_SECONDS_BUCKETS, tuple(int(c) for c in row[2:-2]), int(row[-2]), float(row[-1])
        )
        for row in rows
    }


def database_source(database: Database, lease_seconds: float) -> SnapshotSource:
    """A :data:`SnapshotSource` reading ``database`` at every scrape (give it to :func:`set_source`)."""

    def read() -> Snapshot:
        with database.read() as session:
            return database_snapshot(session, now=utcnow(), lease_seconds=lease_seconds)

    return read
