"""A registry with a sample of every metric, the ones a real run does not produce included (5xx requests,
sharpness, a sweep's trials), for the unit tests and ``promtool check metrics`` on the exposition text."""

from __future__ import annotations

import itertools
import math

from flatmtl.service.telemetry.collector import Telemetry
from flatmtl.service.telemetry.names import QUEUE_WAIT_BUCKETS, STEP_SECONDS_BUCKETS
from flatmtl.service.telemetry.points import training_points
from flatmtl.service.telemetry.snapshot import HistogramCounts, RunningJob, Snapshot, TrainingSeries

TASKS = ("segmentation", "depth", "normal")


def _training_latest(scrape: int) -> dict[str, float]:
    """One step's points as a worker writes them, through the same naming function."""
    angle = 2 * math.pi / 3
    cosines = [[math.cos(angle * (a - b)) for b in range(3)] for a in range(3)]
    magnitudes = [[1.0 if a == b else 0.5 for b in range(3)] for a in range(3)]
    points = training_points(
        scrape,
        tasks=TASKS,
        samples_total=1000 * scrape,
        step_seconds=0.2,
        losses=[1.0 / scrape, 2.0 / scrape, 3.0 / scrape],
        gradient_norms=[1.0, 2.0, 3.0],
        cosines=cosines,
        magnitude_similarities=magnitudes,
        conflict_ratio=1.0,
        sam_wrapper_share=0.5,
        aggregation_share=0.1,
        communication_bytes=4096,
        sharpness=[0.01, 0.02, 0.03],
    )
    return {name: value for _, name, value in points}


def _series(trial: int | None, scrape: int) -> TrainingSeries:
    step_seconds = HistogramCounts.of([0.2] * (10 * scrape), STEP_SECONDS_BUCKETS)
    return TrainingSeries(trial, _training_latest(scrape), step_seconds)


def snapshot(scrape: int) -> Snapshot:
    """The control plane, a running training job (7) and a sweep (8) with two running trials, after ``scrape``
    scrapes (counters grow with it)."""
    return Snapshot(
        jobs_by_state={"queued": 1, "running": 1, "succeeded": scrape, "failed": scrape, "cancelled": 0},
        queue_wait=HistogramCounts.of([3.0 * k for k in range(scrape + 1)], QUEUE_WAIT_BUCKETS),
        oldest_queued_age_seconds=12.0 * scrape,
        lease_expirations=scrape,
        retries=scrape,
        failures=scrape,
        worker_heartbeat_age_seconds={"worker-0": 2.0},
        workers_alive=1,
        running_jobs=(
            RunningJob(job_id=7, attempt=2, series=(_series(None, scrape),)),
            RunningJob(job_id=8, attempt=1, series=(_series(0, scrape), _series(3, scrape))),
        ),
    )


def growing_telemetry() -> Telemetry:
    """A registry whose every scrape shows one more step, API request, failure, claim and lease expiry."""
    scrapes = itertools.count(1)
    metrics = Telemetry()

    def source() -> Snapshot:
        scrape = next(scrapes)
        for status in (200, 500):
            metrics.observe_request("/jobs/{job_id}", "get", status, 0.01 * scrape)
        return snapshot(scrape)

    metrics.set_source(source)
    return metrics
