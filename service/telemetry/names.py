"""The names of everything FlatMTL exports to Prometheus, and of the points workers store for it.

The worker imports this module (and :mod:`.points`) to name what it writes; the API's collector imports it
to read those points back and export them. It is pure Python, so the worker pulls in neither the
Prometheus client nor SQLAlchemy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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


# What workers store in the metrics table: the contract between the writer and the collector.

POINT_PREFIX = "train/"
POINT_SAMPLES = "train/samples_total"
POINT_STEP_SECONDS = "train/step_seconds"
POINT_CONFLICT_RATIO = "train/conflict_ratio"
POINT_COSINE_MIN = "train/cosine_min"
POINT_COSINE_MEAN = "train/cosine_mean"
POINT_MAGNITUDE_MIN = "train/magnitude_similarity_min"
POINT_MAGNITUDE_MEAN = "train/magnitude_similarity_mean"
POINT_COMMUNICATION = "train/communication_bytes"
PER_TASK = {"loss": TRAINING_LOSS, "grad_norm": TRAINING_GRADIENT_NORM, "sharpness": TRAINING_SHARPNESS}
PER_PAIR = {"cosine": TRAINING_COSINE, "magnitude_similarity": TRAINING_MAGNITUDE}
SCALARS = {
    POINT_CONFLICT_RATIO: TRAINING_CONFLICT_RATIO,
    POINT_COSINE_MIN: TRAINING_COSINE_MIN,
    POINT_COSINE_MEAN: TRAINING_COSINE_MEAN,
    POINT_MAGNITUDE_MIN: TRAINING_MAGNITUDE_MIN,
    POINT_MAGNITUDE_MEAN: TRAINING_MAGNITUDE_MEAN,
    POINT_COMMUNICATION: TRAINING_COMMUNICATION,
}


def route_point(name: str) -> tuple[MetricSpec | None, list[str]]:
    """Which metric a stored point feeds, and its labels besides job_id; (None, []) for other points."""
    if name == POINT_SAMPLES:
        return TRAINING_SAMPLES, []
    if name in SCALARS:
        return SCALARS[name], []
    if not name.startswith(POINT_PREFIX):
        return None, []
    parts = name[len(POINT_PREFIX) :].split("/")
    if len(parts) == 2 and parts[0] == "step_ratio" and parts[1] in STEP_PHASES:
        return TRAINING_PHASE_RATIO, [parts[1]]
    if len(parts) == 2 and parts[0] in PER_TASK:
        return PER_TASK[parts[0]], [parts[1]]
    if len(parts) == 3 and parts[0] in PER_PAIR:
        return PER_PAIR[parts[0]], parts[1:]
    return None, []
