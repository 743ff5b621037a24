"""What ``GET /metrics`` serves: the API's registry, with request latency and the scrape-time collector.

The collector exports a :data:`~.snapshot.SnapshotSource` at every scrape. A job's series exist exactly
while it runs: the source yields only running jobs, so nothing needs removing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from flatmtl.service.models import JOB_STATES
from flatmtl.service.telemetry.names import (
    API_LATENCY_BUCKETS,
    API_REQUEST_SECONDS,
    JOB_ATTEMPT,
    JOB_FAILURES,
    JOB_RETRIES,
    JOBS,
    LEASE_EXPIRATIONS,
    PER_PAIR,
    PER_TASK,
    QUEUE_OLDEST_AGE,
    QUEUE_WAIT,
    SCALARS,
    SOURCE_UP,
    TRAINING_PHASE_RATIO,
    TRAINING_SAMPLES,
    TRAINING_STEP_SECONDS,
    WORKER_HEARTBEAT_AGE,
    WORKERS_ALIVE,
    MetricSpec,
    route_point,
)
from flatmtl.service.telemetry.snapshot import RunningJob, Snapshot, SnapshotSource

__all__ = ["CONTENT_TYPE_LATEST"]

log = logging.getLogger(__name__)


def _family(spec: MetricSpec, extra_labels: Sequence[str] = ()) -> Metric:
    labels = [*spec.labels, *extra_labels]
    if spec.kind == "counter":
        return CounterMetricFamily(spec.name, spec.help, labels=labels)
    if spec.kind == "histogram":
        return HistogramMetricFamily(spec.name, spec.help, labels=labels)
    return GaugeMetricFamily(spec.name, spec.help, labels=labels)


class SnapshotCollector(Collector):
    """Exports a :data:`SnapshotSource` at every scrape. A failing source yields only ``source_up 0``."""

    def __init__(self, source: SnapshotSource, owner: str | None = None) -> None:
        self.source, self.owner = source, owner

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
        running = snapshot.running_jobs
        if self.owner is not None:
            running = [job for job in running if job.owner == self.owner]
        yield from _training(running)


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
            *PER_TASK.values(),
            *PER_PAIR.values(),
            *SCALARS.values(),
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
                spec, labels = route_point(name)
                if spec is not None:
                    families[spec.name].add_metric([*run, *labels], value)
    yield from families.values()


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

    def render(self, owner: str | None = None) -> bytes:
        """The registry in Prometheus's text format (serve it with :data:`CONTENT_TYPE_LATEST`); with ``owner``,
        the training series of that user's running jobs only (the control plane's totals name no job)."""
        if owner is None:
            return generate_latest(self.registry)
        with self._lock:
            collector = self._collector
        scoped = CollectorRegistry()
        scoped.register(self.api_request_seconds)
        if collector is not None:
            scoped.register(SnapshotCollector(collector.source, owner))
        return generate_latest(scoped)


TELEMETRY = Telemetry()
"""The API process's registry; ``api`` gives it the database source at start-up."""
