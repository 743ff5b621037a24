"""FlatMTL's Prometheus metrics: one scrape target, the API, for the control plane and for training.

Why the API exports training metrics: Ray runs training in processes that come and go (trials,
Train workers, restarts after a lost lease), on ports and hosts Prometheus cannot know in advance.
Workers already write their step metrics into the database's ``metrics`` table through the
lease-fenced queue, so the API reads the latest values of RUNNING jobs from there at scrape time
(:class:`SnapshotCollector`, through an injected :data:`SnapshotSource`). A job's series exist
exactly while it runs: the collector yields only running jobs, so nothing needs removing.
A sweep's running trials are exported the same way with a ``trial`` label (its index; empty, that
is absent in Prometheus, for a training job): the label is bounded by how many trials Ray Tune runs at
once, and a trial's series end with the trial. Request latency is the one thing measured in the API
process itself.

Workers name their points with :func:`training_points`, so writer and reader agree on the names.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from sqlalchemy import Float, case, cast, func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from flatmtl.service.db import Database
from flatmtl.service.models import JOB_STATES, Event, Job, Trial, utcnow
from flatmtl.service.models import Metric as MetricRow

__all__ = ["CONTENT_TYPE_LATEST"]

log = logging.getLogger(__name__)

Kind = Literal["counter", "gauge", "histogram"]

STEP_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
QUEUE_WAIT_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0)
API_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_PAIR_TASKS = 8
"""Up to this many tasks every task pair gets its own cosine and magnitude series; above, only min/mean."""
STEP_PHASES = ("sam_wrapper", "aggregation")


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric: its name without the type suffix, type, help text and label names."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()

    @property
    def sample_names(self) -> tuple[str, ...]:
        """The names its samples carry in the exposition text, as PromQL refers to them."""
        if self.kind == "counter":
            return (f"{self.name}_total",)
        if self.kind == "histogram":
            return tuple(f"{self.name}_{suffix}" for suffix in ("bucket", "count", "sum"))
        return (self.name,)


def _spec(name: str, kind: Kind, help_text: str, *labels: str) -> MetricSpec:
    return MetricSpec(name, kind, help_text, labels)


TRAINING_SAMPLES = _spec(
    "flatmtl_training_samples", "counter", "Samples processed by a running job or trial.", "job_id", "trial"
)
TRAINING_STEP_SECONDS = _spec(
    "flatmtl_training_step_seconds", "histogram", "Wall time of a training step of a running job.", "job_id", "trial"
)
TRAINING_LOSS = _spec("flatmtl_training_loss", "gauge", "Latest training loss per task.", "job_id", "trial", "task")
TRAINING_GRADIENT_NORM = _spec(
    "flatmtl_training_gradient_norm",
    "gauge",
    "Latest norm of a task's shared-parameter gradient.",
    "job_id",
    "trial",
    "task",
)
TRAINING_SHARPNESS = _spec(
    "flatmtl_training_sharpness",
    "gauge",
    "Loss increase under the SAM perturbation, per task.",
    "job_id",
    "trial",
    "task",
)
TRAINING_CONFLICT_RATIO = _spec(
    "flatmtl_training_gradient_conflict_ratio",
    "gauge",
    "Share of task pairs whose gradients have a negative inner product.",
    "job_id",
    "trial",
)
TRAINING_COSINE = _spec(
    "flatmtl_training_gradient_cosine",
    "gauge",
    f"Cosine similarity of two tasks' gradients (jobs with at most {MAX_PAIR_TASKS} tasks).",
    "job_id",
    "trial",
    "task_a",
    "task_b",
)
TRAINING_COSINE_MIN = _spec(
    "flatmtl_training_gradient_cosine_min", "gauge", "Smallest pairwise gradient cosine.", "job_id", "trial"
)
TRAINING_COSINE_MEAN = _spec(
    "flatmtl_training_gradient_cosine_mean", "gauge", "Mean pairwise gradient cosine.", "job_id", "trial"
)
TRAINING_MAGNITUDE = _spec(
    "flatmtl_training_gradient_magnitude_similarity",
    "gauge",
    f"2|g_a||g_b|/(|g_a|^2+|g_b|^2) of two tasks' gradients (jobs with at most {MAX_PAIR_TASKS} tasks).",
    "job_id",
    "trial",
    "task_a",
    "task_b",
)
TRAINING_MAGNITUDE_MIN = _spec(
    "flatmtl_training_gradient_magnitude_similarity_min",
    "gauge",
    "Smallest pairwise magnitude similarity.",
    "job_id",
    "trial",
)
TRAINING_MAGNITUDE_MEAN = _spec(
    "flatmtl_training_gradient_magnitude_similarity_mean",
    "gauge",
    "Mean pairwise magnitude similarity.",
    "job_id",
    "trial",
)
TRAINING_PHASE_RATIO = _spec(
    "flatmtl_training_step_phase_ratio",
    "gauge",
    "Share of step time spent in a phase (sam_wrapper: perturbed passes; aggregation).",
    "job_id",
    "trial",
    "phase",
)
TRAINING_COMMUNICATION = _spec(
    "flatmtl_training_step_communication_bytes",
    "gauge",
    "Bytes one rank sent in collectives in a step.",
    "job_id",
    "trial",
)
JOB_ATTEMPT = _spec("flatmtl_job_attempt", "gauge", "Attempt number of a running job (1 on its first run).", "job_id")

JOBS = _spec("flatmtl_jobs", "gauge", "Jobs per state.", "state")
QUEUE_WAIT = _spec("flatmtl_queue_wait_seconds", "histogram", "Time from submission to a job's first claim.")
QUEUE_OLDEST_AGE = _spec(
    "flatmtl_queue_oldest_job_age_seconds", "gauge", "Age of the oldest queued job (0 when none is queued)."
)
LEASE_EXPIRATIONS = _spec("flatmtl_lease_expirations", "counter", "Leases that expired without a heartbeat.")
JOB_RETRIES = _spec("flatmtl_job_retries", "counter", "Failed or cancelled jobs queued again by a user.")
JOB_FAILURES = _spec("flatmtl_job_failures", "counter", "Jobs that ended failed.")
WORKER_HEARTBEAT_AGE = _spec(
    "flatmtl_worker_heartbeat_age_seconds", "gauge", "Seconds since a busy worker's last heartbeat.", "worker"
)
WORKERS_ALIVE = _spec("flatmtl_workers_alive", "gauge", "Workers holding an unexpired lease.")
SOURCE_UP = _spec("flatmtl_telemetry_source_up", "gauge", "1 if the last scrape could read the database, else 0.")
API_REQUEST_SECONDS = _spec(
    "flatmtl_api_request_duration_seconds",
    "histogram",
    "API request latency by route template, method and status code.",
    "route",
    "method",
    "status",
)

METRICS: tuple[MetricSpec, ...] = (
    TRAINING_SAMPLES,
    TRAINING_STEP_SECONDS,
    TRAINING_LOSS,
    TRAINING_GRADIENT_NORM,
    TRAINING_SHARPNESS,
    TRAINING_CONFLICT_RATIO,
    TRAINING_COSINE,
    TRAINING_COSINE_MIN,
    TRAINING_COSINE_MEAN,
    TRAINING_MAGNITUDE,
    TRAINING_MAGNITUDE_MIN,
    TRAINING_MAGNITUDE_MEAN,
    TRAINING_PHASE_RATIO,
    TRAINING_COMMUNICATION,
    JOB_ATTEMPT,
    JOBS,
    QUEUE_WAIT,
    QUEUE_OLDEST_AGE,
    LEASE_EXPIRATIONS,
    JOB_RETRIES,
    JOB_FAILURES,
    WORKER_HEARTBEAT_AGE,
    WORKERS_ALIVE,
    SOURCE_UP,
    API_REQUEST_SECONDS,
)


def sample_names() -> frozenset[str]:
    """Every sample name this module can export (what dashboards and rules may refer to)."""
    return frozenset(name for spec in METRICS for name in spec.sample_names)


# --- What workers write into the metrics table (the contract between writer and collector) ---

POINT_PREFIX = "train/"
POINT_SAMPLES = "train/samples_total"
POINT_STEP_SECONDS = "train/step_seconds"
POINT_CONFLICT_RATIO = "train/conflict_ratio"
POINT_COSINE_MIN = "train/cosine_min"
POINT_COSINE_MEAN = "train/cosine_mean"
POINT_MAGNITUDE_MIN = "train/magnitude_similarity_min"
POINT_MAGNITUDE_MEAN = "train/magnitude_similarity_mean"
POINT_COMMUNICATION = "train/communication_bytes"
_PER_TASK = {"loss": TRAINING_LOSS, "grad_norm": TRAINING_GRADIENT_NORM, "sharpness": TRAINING_SHARPNESS}
_PER_PAIR = {"cosine": TRAINING_COSINE, "magnitude_similarity": TRAINING_MAGNITUDE}
_SCALARS = {
    POINT_CONFLICT_RATIO: TRAINING_CONFLICT_RATIO,
    POINT_COSINE_MIN: TRAINING_COSINE_MIN,
    POINT_COSINE_MEAN: TRAINING_COSINE_MEAN,
    POINT_MAGNITUDE_MIN: TRAINING_MAGNITUDE_MIN,
    POINT_MAGNITUDE_MEAN: TRAINING_MAGNITUDE_MEAN,
    POINT_COMMUNICATION: TRAINING_COMMUNICATION,
}

Point = tuple[int, str, float]


def _check_square(name: str, matrix: Sequence[Sequence[float]], size: int) -> None:
    if len(matrix) != size or any(len(row) != size for row in matrix):
        raise ValueError(f"{name} must be a {size} x {size} matrix (one row and column per task)")


def training_points(
    step: int,
    *,
    tasks: Sequence[str],
    samples_total: int,
    step_seconds: float,
    losses: Sequence[float],
    gradient_norms: Sequence[float],
    cosines: Sequence[Sequence[float]],
    magnitude_similarities: Sequence[Sequence[float]],
    conflict_ratio: float,
    sam_wrapper_seconds: float = 0.0,
    aggregation_seconds: float = 0.0,
    communication_bytes: float = 0.0,
    sharpness: Sequence[float] | None = None,
) -> list[Point]:
    """One step's metrics as ``(step, name, value)`` points for ``flatmtl.service.queue.record_metrics``.

    ``cosines`` and ``magnitude_similarities`` are K x K (``flatmtl.workers.mtl.diagnostics``); per-pair points
    are written only for K <= MAX_PAIR_TASKS so a 40-task job adds 2 series, not 1560. Phase seconds
    become shares of ``step_seconds``.
    """
    num_tasks = len(tasks)
    for task in tasks:
        if not task or "/" in task:
            raise ValueError(f"task name {task!r} must be non-empty and contain no '/'")
    for field_name, values in (("losses", losses), ("gradient_norms", gradient_norms), ("sharpness", sharpness)):
        if values is not None and len(values) != num_tasks:
            raise ValueError(f"{field_name} has {len(values)} values; expected one per task ({num_tasks})")
    _check_square("cosines", cosines, num_tasks)
    _check_square("magnitude_similarities", magnitude_similarities, num_tasks)
    if step_seconds <= 0 or samples_total < 0:
        raise ValueError(f"step_seconds must be > 0 (got {step_seconds}) and samples_total >= 0 (got {samples_total})")

    points: list[Point] = [
        (step, POINT_SAMPLES, float(samples_total)),
        (step, POINT_STEP_SECONDS, float(step_seconds)),
        (step, POINT_CONFLICT_RATIO, float(conflict_ratio)),
        (step, POINT_COMMUNICATION, float(communication_bytes)),
        (step, f"{POINT_PREFIX}step_ratio/sam_wrapper", sam_wrapper_seconds / step_seconds),
        (step, f"{POINT_PREFIX}step_ratio/aggregation", aggregation_seconds / step_seconds),
    ]
    per_task = {"loss": losses, "grad_norm": gradient_norms, "sharpness": sharpness}
    for kind, values in per_task.items():
        if values is not None:
            points += [(step, f"{POINT_PREFIX}{kind}/{task}", float(v)) for task, v in zip(tasks, values, strict=True)]
    pairs = [(a, b) for a in range(num_tasks) for b in range(a + 1, num_tasks)]
    for kind, matrix, low, mean in (
        ("cosine", cosines, POINT_COSINE_MIN, POINT_COSINE_MEAN),
        ("magnitude_similarity", magnitude_similarities, POINT_MAGNITUDE_MIN, POINT_MAGNITUDE_MEAN),
    ):
        values = [float(matrix[a][b]) for a, b in pairs] or [1.0]
        points += [(step, low, min(values)), (step, mean, math.fsum(values) / len(values))]
        if num_tasks <= MAX_PAIR_TASKS:
            points += [(step, f"{POINT_PREFIX}{kind}/{tasks[a]}/{tasks[b]}", float(matrix[a][b])) for a, b in pairs]
    return points


# --- Scrape-time snapshots (what the injected source returns) ---


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
    """A running job: a training job has one :class:`TrainingSeries`, a sweep one per running trial."""

    job_id: int
    attempt: int
    series: Sequence[TrainingSeries] = ()


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


def _family(spec: MetricSpec, extra_labels: Sequence[str] = ()) -> Metric:
    labels = [*spec.labels, *extra_labels]
    if spec.kind == "counter":
        return CounterMetricFamily(spec.name, spec.help, labels=labels)
    if spec.kind == "histogram":
        return HistogramMetricFamily(spec.name, spec.help, labels=labels)
    return GaugeMetricFamily(spec.name, spec.help, labels=labels)


class SnapshotCollector(Collector):
    """Exports a :data:`SnapshotSource` at every scrape. A failing source yields only ``source_up 0``."""

    def __init__(self, source: SnapshotSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(SOURCE_UP.name, SOURCE_UP.help)
        try:
            snapshot = self.source()
        except Exception:
            log.exception("telemetry source failed; exporting flatmtl_telemetry_source_up 0")
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from _control_plane(snapshot)
        yield from _training(snapshot.running_jobs)


def _control_plane(snapshot: Snapshot) -> Iterator[Metric]:
    jobs = _family(JOBS)
    for state in JOB_STATES:
        jobs.add_metric([state], float(snapshot.jobs_by_state.get(state, 0)))
    wait = _family(QUEUE_WAIT)
    wait.add_metric([], snapshot.queue_wait.buckets(), snapshot.queue_wait.total)
    oldest = _family(QUEUE_OLDEST_AGE)
    oldest.add_metric([], snapshot.oldest_queued_age_seconds)
    counters = []
    for spec, value in (
        (LEASE_EXPIRATIONS, snapshot.lease_expirations),
        (JOB_RETRIES, snapshot.retries),
        (JOB_FAILURES, snapshot.failures),
    ):
        family = _family(spec)
        family.add_metric([], float(value))
        counters.append(family)
    heartbeat = _family(WORKER_HEARTBEAT_AGE)
    for worker, age in sorted(snapshot.worker_heartbeat_age_seconds.items()):
        heartbeat.add_metric([worker], age)
    alive = _family(WORKERS_ALIVE)
    alive.add_metric([], float(snapshot.workers_alive))
    yield from (jobs, wait, oldest, *counters, heartbeat, alive)


def _training(running: Sequence[RunningJob]) -> Iterator[Metric]:
    families = {
        spec.name: _family(spec)
        for spec in (
            TRAINING_SAMPLES,
            TRAINING_STEP_SECONDS,
            TRAINING_PHASE_RATIO,
            JOB_ATTEMPT,
            *_PER_TASK.values(),
            *_PER_PAIR.values(),
            *_SCALARS.values(),
        )
    }
    for job in running:
        job_id = str(job.job_id)
        families[JOB_ATTEMPT.name].add_metric([job_id], float(job.attempt))
        for series in job.series:
            run = [job_id, "" if series.trial is None else str(series.trial)]
            step = series.step_seconds
            families[TRAINING_STEP_SECONDS.name].add_metric(run, step.buckets(), step.total)
            for name, value in sorted(series.latest.items()):
                spec, labels = _route_point(name)
                if spec is not None:
                    families[spec.name].add_metric([*run, *labels], value)
    yield from families.values()


def _route_point(name: str) -> tuple[MetricSpec | None, list[str]]:
    """Which metric a stored point feeds, and its labels besides job_id; (None, []) for other points."""
    if name == POINT_SAMPLES:
        return TRAINING_SAMPLES, []
    if name in _SCALARS:
        return _SCALARS[name], []
    if not name.startswith(POINT_PREFIX):
        return None, []
    parts = name[len(POINT_PREFIX) :].split("/")
    if len(parts) == 2 and parts[0] == "step_ratio" and parts[1] in STEP_PHASES:
        return TRAINING_PHASE_RATIO, [parts[1]]
    if len(parts) == 2 and parts[0] in _PER_TASK:
        return _PER_TASK[parts[0]], [parts[1]]
    if len(parts) == 3 and parts[0] in _PER_PAIR:
        return _PER_PAIR[parts[0]], parts[1:]
    return None, []


# --- The database as a source ---


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
        select(Job.id, Job.attempt, Job.lease_owner, Job.lease_expires_at).where(Job.state == "running")
    ).all()
    heartbeats: dict[str, float] = {}
    for _, _, owner, expires in running:
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
        running_jobs=_running_jobs(session, {job_id: attempt for job_id, attempt, _, _ in running}),
    )


def _running_jobs(session: Session, attempts: Mapping[int, int]) -> list[RunningJob]:
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


# --- The API process's registry ---


class Telemetry:
    """A registry holding the API's request latency and, once given a source, the scrape-time collector."""

    def __init__(self, source: SnapshotSource | None = None) -> None:
        self.registry = CollectorRegistry()
        self.api_request_seconds = Histogram(
            API_REQUEST_SECONDS.name,
            API_REQUEST_SECONDS.help,
            labelnames=API_REQUEST_SECONDS.labels,
            buckets=API_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._collector: SnapshotCollector | None = None
        self._lock = threading.Lock()
        if source is not None:
            self.set_source(source)

    def set_source(self, source: SnapshotSource) -> None:
        """Export ``source`` at every scrape (replacing an earlier one)."""
        with self._lock:
            if self._collector is not None:
                self.registry.unregister(self._collector)
            self._collector = SnapshotCollector(source)
            self.registry.register(self._collector)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Record one API request. ``route`` must be the route template (``/jobs/{job_id}``), never the
        raw path, and unmatched paths one fixed label, so the label set stays bounded."""
        self.api_request_seconds.labels(route=route, method=method.upper(), status=str(status)).observe(seconds)

    def render(self) -> bytes:
        """The registry in Prometheus's text format (serve it with :data:`CONTENT_TYPE_LATEST`)."""
        return generate_latest(self.registry)


TELEMETRY = Telemetry()
"""The API process's registry; ``api`` gives it the database source at start-up."""


def set_source(source: SnapshotSource) -> None:
    TELEMETRY.set_source(source)


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    TELEMETRY.observe_request(route, method, status, seconds)


def render_latest() -> bytes:
    """The body of ``GET /metrics`` (content type :data:`CONTENT_TYPE_LATEST`)."""
    return TELEMETRY.render()
