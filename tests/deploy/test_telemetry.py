"""flatmtl.service.telemetry: the worker-side point names, the scrape-time collector and the database source."""

from __future__ import annotations

import math
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from flatmtl.service.db import Database
from flatmtl.service.models import Event, Job, Trial
from flatmtl.service.models import Metric as MetricRow
from flatmtl.service.telemetry.collector import Telemetry
from flatmtl.service.telemetry.names import (
    MAX_PAIR_TASKS,
    POINT_COSINE_MEAN,
    POINT_COSINE_MIN,
    POINT_MAGNITUDE_MEAN,
    POINT_MAGNITUDE_MIN,
    POINT_SAMPLES,
    POINT_STEP_SECONDS,
    QUEUE_WAIT_BUCKETS,
    STEP_SECONDS_BUCKETS,
)
from flatmtl.service.telemetry.points import training_points
from flatmtl.service.telemetry.snapshot import (
    HistogramCounts,
    RunningJob,
    Snapshot,
    TrainingSeries,
    database_snapshot,
    database_source,
)
from flatmtl.workers.mtl import diagnostics
from tests.deploy.samples import snapshot


def test_the_worker_side_of_telemetry_loads_neither_prometheus_nor_sqlalchemy() -> None:
    """The worker names and writes its points with these modules and must not pull in the API's dependencies."""
    code = (
        "import sys, flatmtl.service.telemetry.names, flatmtl.service.telemetry.points;"
        "loaded = [m for m in ('prometheus_client', 'sqlalchemy') if m in sys.modules];"
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _samples(metrics: Telemetry) -> list[tuple[str, dict[str, str], float]]:
    text = metrics.render().decode()
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def _points(num_tasks: int, seed: int = 0) -> tuple[list[str], torch.Tensor, dict[str, float]]:
    generator = torch.Generator().manual_seed(seed)
    grads = torch.randn(num_tasks, 50, generator=generator, dtype=torch.float64)
    gram = grads @ grads.T
    tasks = [f"task{k}" for k in range(num_tasks)]
    points = training_points(
        3,
        tasks=tasks,
        samples_total=96,
        step_seconds=0.5,
        losses=[1.0] * num_tasks,
        gradient_norms=diagnostics.task_norms(gram).tolist(),
        cosines=diagnostics.cosine_matrix(gram).tolist(),
        magnitude_similarities=diagnostics.magnitude_similarity_matrix(gram).tolist(),
        conflict_ratio=diagnostics.conflict_ratio(gram),
        sam_wrapper_share=0.4,
        aggregation_share=0.1,
    )
    assert {step for step, _, _ in points} == {3}
    return tasks, gram, {name: value for _, name, value in points}


@pytest.mark.parametrize("num_tasks", [2, 3, MAX_PAIR_TASKS])
def test_small_jobs_get_every_pair_and_summaries_match_the_diagnostics(num_tasks: int) -> None:
    tasks, gram, latest = _points(num_tasks)
    summary = diagnostics.summarize(gram)
    pairs = [name for name in latest if name.startswith("train/cosine/")]
    assert len(pairs) == num_tasks * (num_tasks - 1) // 2
    cosines = diagnostics.cosine_matrix(gram)
    assert latest[f"train/cosine/{tasks[0]}/{tasks[1]}"] == pytest.approx(float(cosines[0, 1]))
    assert latest[POINT_COSINE_MIN] == pytest.approx(summary.cosine_min)
    assert latest[POINT_COSINE_MEAN] == pytest.approx(summary.cosine_mean)
    assert latest[POINT_MAGNITUDE_MEAN] == pytest.approx(summary.magnitude_similarity_mean)
    assert latest["train/step_ratio/sam_wrapper"] == pytest.approx(0.4)
    assert latest["train/step_ratio/aggregation"] == pytest.approx(0.1)


def test_large_jobs_export_summaries_only() -> None:
    num_tasks = MAX_PAIR_TASKS + 1
    _, gram, latest = _points(num_tasks)
    assert not [name for name in latest if name.count("/") == 3]
    magnitudes = diagnostics.magnitude_similarity_matrix(gram)
    off_diagonal = magnitudes[~torch.eye(num_tasks, dtype=torch.bool)]
    assert latest[POINT_MAGNITUDE_MIN] == pytest.approx(float(off_diagonal.min()))
    metrics = Telemetry(lambda: _with_job(snapshot(1), latest))
    names = {name for name, labels, _ in _samples(metrics) if labels.get("job_id") == "9"}
    assert "flatmtl_training_gradient_cosine_min" in names
    assert "flatmtl_training_gradient_cosine" not in names
    assert "flatmtl_training_gradient_magnitude_similarity" not in names
    assert len([n for n in names if n == "flatmtl_training_loss"]) == 1


def _with_job(base: Snapshot, latest: dict[str, float]) -> Snapshot:
    job = RunningJob(9, 1, (TrainingSeries(None, latest, HistogramCounts.empty(STEP_SECONDS_BUCKETS)),))
    return Snapshot(**{**base.__dict__, "running_jobs": (job,)})


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"tasks": ["a/b", "c"]}, "task name"),
        ({"losses": [1.0]}, "losses"),
        ({"cosines": [[1.0, 0.0]]}, "cosines"),
        ({"step_seconds": 0.0}, "step_seconds"),
    ],
)
def test_bad_points_name_the_field(changes: dict[str, object], field: str) -> None:
    arguments: dict[str, object] = {
        "tasks": ["a", "c"],
        "samples_total": 1,
        "step_seconds": 1.0,
        "losses": [1.0, 2.0],
        "gradient_norms": [1.0, 1.0],
        "cosines": [[1.0, 0.0], [0.0, 1.0]],
        "magnitude_similarities": [[1.0, 1.0], [1.0, 1.0]],
        "conflict_ratio": 0.0,
    }
    with pytest.raises(ValueError, match=field):
        training_points(1, **{**arguments, **changes})


def test_job_series_exist_only_while_the_job_runs() -> None:
    scrapes = iter([snapshot(1), Snapshot(**{**snapshot(2).__dict__, "running_jobs": ()})])
    metrics = Telemetry(lambda: next(scrapes))
    running = {name for name, labels, _ in _samples(metrics) if labels.get("job_id") == "7"}
    assert {"flatmtl_training_samples_total", "flatmtl_training_loss", "flatmtl_job_attempt"} <= running
    assert not [name for name, labels, _ in _samples(metrics) if "job_id" in labels]


def test_a_failing_source_reports_itself_down_and_keeps_api_metrics() -> None:
    def broken() -> Snapshot:
        raise ConnectionError("database unreachable")

    metrics = Telemetry(broken)
    metrics.observe_request("/jobs", "post", 503, 0.2)
    samples = _samples(metrics)
    assert ("flatmtl_telemetry_source_up", {}, 0.0) in samples
    assert (
        "flatmtl_api_request_duration_seconds_count",
        {"route": "/jobs", "method": "POST", "status": "503"},
        1.0,
    ) in samples
    assert not [name for name, _, _ in samples if name.startswith("flatmtl_jobs")]


def test_histogram_counts_follow_the_definition() -> None:
    values = [0.0, 0.2, 1.0, 1.5, 100.0]
    counts = HistogramCounts.of(values, (1.0, 2.0, 10.0))
    assert counts.cumulative == (3, 4, 4)
    assert counts.buckets()[-1] == ("+Inf", 5)
    assert counts.total == pytest.approx(sum(values))


NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def _job(state: str, *, created: float, started: float | None = None, **fields: object) -> Job:
    return Job(
        kind="train",
        state=state,
        spec={},
        created_at=NOW - timedelta(seconds=created),
        started_at=None if started is None else NOW - timedelta(seconds=started),
        **fields,
    )


def test_database_source_reads_the_control_plane_and_running_jobs(db: Database) -> None:
    with db.write() as session:
        queued = _job("queued", created=300)
        waited_3s = _job("succeeded", created=1000, started=997)
        running = _job(
            "running",
            created=500,
            started=400,
            attempt=2,
            lease_owner="host-a:1",
            lease_expires_at=NOW + timedelta(seconds=45),
        )
        session.add_all([queued, waited_3s, running, _job("queued", created=30)])
        session.flush()
        for kind in ("lease_expired", "lease_expired", "retried", "failed", "claimed"):
            session.add(Event(job_id=running.id, kind=kind, message="", created_at=NOW))
        rows = [
            (running.id, None, 1, POINT_SAMPLES, 32.0),
            (running.id, None, 2, POINT_SAMPLES, 64.0),
            (running.id, None, 1, POINT_STEP_SECONDS, 0.3),
            (running.id, None, 2, POINT_STEP_SECONDS, 3.0),
            (running.id, None, 2, "train/loss/depth", 0.7),
            (running.id, None, 2, "train/loss/normal", None),
            (running.id, 0, 9, "train/loss/depth", 5.0),
            (running.id, None, 2, "delta_m", 1.0),
            (waited_3s.id, None, 1, POINT_SAMPLES, 1.0),
        ]
        for job_id, trial, step, name, value in rows:
            session.add(MetricRow(job_id=job_id, trial_index=trial, step=step, name=name, value=value, created_at=NOW))

    with db.read() as session:
        result = database_snapshot(session, now=NOW, lease_seconds=60.0)

    states = {"queued": 2, "running": 1, "succeeded": 1, "partially_failed": 0, "failed": 0, "cancelled": 0}
    assert result.jobs_by_state == states
    assert result.oldest_queued_age_seconds == pytest.approx(300.0, abs=0.01)
    wait = dict(zip(result.queue_wait.bounds, result.queue_wait.cumulative, strict=True))
    assert (result.queue_wait.count, wait[1.0], wait[5.0], wait[60.0], wait[120.0]) == (2, 0, 1, 1, 2)
    assert result.queue_wait.total == pytest.approx(103.0, abs=0.01)
    assert (result.lease_expirations, result.retries, result.failures) == (2, 1, 1)
    assert result.worker_heartbeat_age_seconds == pytest.approx({"host-a:1": 15.0}, abs=0.01)
    assert result.workers_alive == 1
    (job,) = result.running_jobs
    assert (job.job_id, job.attempt) == (running.id, 2)
    (series,) = job.series
    assert series.trial is None
    latest = dict(series.latest)
    assert math.isnan(latest.pop("train/loss/normal"))
    assert latest == {POINT_SAMPLES: 64.0, POINT_STEP_SECONDS: 3.0, "train/loss/depth": 0.7}
    step = dict(zip(series.step_seconds.bounds, series.step_seconds.cumulative, strict=True))
    assert (series.step_seconds.count, step[0.25], step[0.5], step[2.5], step[5.0]) == (2, 0, 1, 1, 2)
    assert math.isclose(series.step_seconds.total, 3.3)


def test_database_source_with_an_empty_database(db: Database) -> None:
    with db.read() as session:
        result = database_snapshot(session, now=NOW, lease_seconds=60.0)
    assert result.queue_wait.count == 0 and result.queue_wait.cumulative == (0,) * len(QUEUE_WAIT_BUCKETS)
    assert (result.oldest_queued_age_seconds, result.workers_alive, result.running_jobs) == (0.0, 0, [])
    samples = _samples(Telemetry(database_source(db, lease_seconds=60.0)))
    assert ("flatmtl_telemetry_source_up", {}, 1.0) in samples
    assert ("flatmtl_jobs", {"state": "queued"}, 0.0) in samples


def test_a_running_sweep_exports_its_running_trials_only(db: Database) -> None:
    """Trial series carry the trial index; finished and pending trials' points stay out, and a training job's
    series carry no trial (an empty label, which Prometheus drops)."""
    with db.write() as session:
        train = _job("running", created=60, started=50, lease_owner="w:1", lease_expires_at=NOW)
        sweep = _job("running", created=60, started=50, lease_owner="w:2", lease_expires_at=NOW)
        sweep.kind = "sweep"
        session.add_all([train, sweep])
        session.flush()
        for index, state in enumerate(("running", "succeeded", "pending", "running")):
            session.add(Trial(job_id=sweep.id, trial_index=index, config={}, state=state))
        _, _, latest = _points(2)
        rows = [(train.id, None), (sweep.id, 0), (sweep.id, 1), (sweep.id, 3)]
        for job_id, trial in rows:
            for name, value in latest.items():
                session.add(MetricRow(job_id=job_id, trial_index=trial, step=3, name=name, value=value, created_at=NOW))
        session.add(MetricRow(job_id=sweep.id, trial_index=3, step=1, name=POINT_STEP_SECONDS, value=9.0))

    samples = _samples(Telemetry(database_source(db, lease_seconds=60.0)))
    throughput = {
        (labels["job_id"], labels["trial"]): value
        for name, labels, value in samples
        if name == "flatmtl_training_samples_total"
    }
    assert throughput == {(str(train.id), ""): 96.0, (str(sweep.id), "0"): 96.0, (str(sweep.id), "3"): 96.0}
    steps = {
        (labels["job_id"], labels["trial"]): value
        for name, labels, value in samples
        if name == "flatmtl_training_step_seconds_count"
    }
    assert steps == {(str(train.id), ""): 1.0, (str(sweep.id), "0"): 1.0, (str(sweep.id), "3"): 2.0}
    attempts = [labels["job_id"] for name, labels, _ in samples if name == "flatmtl_job_attempt"]
    assert sorted(attempts) == sorted([str(train.id), str(sweep.id)])
    losses = {(labels["trial"], labels["task"]) for name, labels, _ in samples if name == "flatmtl_training_loss"}
    assert losses == {(trial, f"task{k}") for trial in ("", "0", "3") for k in range(2)}
