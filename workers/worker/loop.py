"""``flatmtl worker``: claim a job, keep its lease alive, run it on Ray, record the outcome; reap meanwhile.

While a job runs, a keeper thread heartbeats its lease (every quarter of the lease time) and reports the
progress; ``cancelled`` or ``lost`` stop the run within one heartbeat plus Tune's stop. The same thread and
the idle loop run the reaper, so a dead worker's job is requeued even when every live worker is busy.
Writes carry the lease's fencing token: once a job is cancelled or requeued, nothing this worker still
sends lands. An attempt > 1 resumes each trial from its run directory's checkpoint.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flatmtl.service import queue
from flatmtl.service.db import Database
from flatmtl.service.errors import LeaseLostError
from flatmtl.service.settings import Settings
from flatmtl.workers.training import ConfigError, RunOptions, check_runnable
from flatmtl.workers.worker.job import JobRun
from flatmtl.workers.worker.plan import JobPaths, plan_job
from flatmtl.workers.worker.trials import ClusterTooSmallError, RaySettings, ensure_ray, run_plan

log = logging.getLogger("flatmtl.worker")
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Keeper(threading.Thread):
    """Heartbeats one lease and runs the reaper until stopped; tells ``on_stop`` why the job must end."""

    def __init__(
        self,
        db: Database,
        lease: queue.Lease,
        lease_seconds: float,
        *,
        progress: Callable[[], float],
        on_stop: Callable[[str], None],
        reap: Callable[[], None],
    ) -> None:
        super().__init__(name=f"keeper-{lease.job_id}", daemon=True)
        self.db, self.lease, self.lease_seconds = db, lease, lease_seconds
        self.progress, self.on_stop, self.reap = progress, on_stop, reap
        self.interval = min(lease_seconds / 4, 10.0)
        self._done = threading.Event()

    def run(self) -> None:
        last_ok = time.monotonic()
        while not self._done.wait(self.interval):
            try:
                status = queue.heartbeat(self.db, self.lease, self.lease_seconds, progress=self.progress())
            except Exception:  # the database may come back before the lease runs out
                log.exception("heartbeat of job %d failed", self.lease.job_id)
                if time.monotonic() - last_ok > self.lease_seconds:
                    self.on_stop("lost")
                    return
                continue
            if status != "ok":
                self.on_stop(status)
                return
            last_ok = time.monotonic()
            self.reap()

    def finish(self) -> None:
        self._done.set()
        self.join()


@dataclass
class WorkerOptions:
    owner: str
    poll_s: float = 1.0
    max_jobs: int | None = None
    exit_when_idle: bool = False


class Worker:
    def __init__(self, settings: Settings, ray_settings: RaySettings, options: WorkerOptions) -> None:
        self.settings, self.ray_settings, self.options = settings, ray_settings, options
        self.db = Database.from_settings(settings)
        self.current: JobRun | None = None
        self._shutdown = threading.Event()
        self._last_reap = 0.0

    def shutdown(self) -> None:
        """Stop claiming; a running job is stopped and left to its lease (the reaper requeues it)."""
        self._shutdown.set()
        if self.current is not None:
            self.current.stop("shutdown")

    def reap(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_reap < self.settings.lease_seconds / 2:
            return
        self._last_reap = now
        try:
            for job_id, state in queue.reap(self.db).items():
                log.info("reaped job %d: lease expired, now %s", job_id, state)
        except Exception:
            log.exception("reaping failed")

    def run(self) -> int:
        """Claim and run jobs until shut down (or ``max_jobs`` ran, or idle with ``exit_when_idle``)."""
        self.db.migrate()
        ensure_ray(self.ray_settings)
        ran = 0
        log.info("worker %s polling %s", self.options.owner, self.db.url.render_as_string(hide_password=True))
        try:
            while not self._shutdown.is_set():
                if self.options.max_jobs is not None and ran >= self.options.max_jobs:
                    break
                self.reap()
                lease = queue.claim(self.db, self.options.owner, self.settings.lease_seconds)
                if lease is None:
                    if self.options.exit_when_idle:
                        break
                    self._shutdown.wait(self.options.poll_s)
                    continue
                self.run_job(lease)
                ran += 1
        finally:
            self.db.dispose()
        return ran

    def run_job(self, lease: queue.Lease) -> None:
        paths = JobPaths(self.settings.artifacts, lease.job_id)
        with job_log(paths.log, lease) as job_logger:
            job_logger.info("attempt %d claimed by %s (lease token %d)", lease.attempt, lease.owner, lease.token)
            try:
                plan = plan_job(lease.job_id, lease.spec, self.settings.artifacts)
                for trial in plan.trials:
                    check_runnable(trial.spec, f"trial {trial.index}" if plan.kind == "sweep" else "")
            except (ConfigError, ValueError) as error:
                self._complete(lease, "failed", None, f"the job cannot run: {error}", job_logger)
                return
            run = JobRun(self.db, lease, plan, paths, job_logger)
            self.current = run
            keeper = Keeper(
                self.db,
                lease,
                self.settings.lease_seconds,
                progress=run.progress,
                on_stop=run.stop,
                reap=self.reap,
            )
            keeper.start()
            try:
                todo = run.load_previous()
                if self._shutdown.is_set():
                    run.stop("shutdown")
                if todo and not run.should_stop():
                    options = RunOptions(
                        device="cuda" if plan.resources["gpus"] > 0 else "cpu",
                        threads=max(1, int(plan.resources["cpus"])),
                    )
                    run_plan(
                        plan,
                        run,
                        self.ray_settings,
                        paths=paths,
                        attempt=lease.attempt,
                        options=options,
                        indices=todo,
                    )
                if run.should_stop():
                    job_logger.info("attempt %d ended without an outcome: %s", lease.attempt, run.stop_reason)
                    return
                outcome, result, error = run.outcome()
                self._complete(lease, outcome, result, error, job_logger)
            except (ClusterTooSmallError, ValueError) as error:
                self._complete(lease, "failed", None, str(error), job_logger)
            except Exception as error:
                job_logger.exception("attempt %d failed", lease.attempt)
                self._complete(lease, "failed", None, f"{type(error).__name__}: {error}", job_logger)
            finally:
                keeper.finish()
                self.current = None

    def _complete(
        self,
        lease: queue.Lease,
        outcome: queue.Outcome,
        result: dict | None,
        error: str | None,
        job_logger: logging.Logger,
    ) -> None:
        try:
            queue.complete(self.db, lease, outcome, result=result, error=error)
        except LeaseLostError:
            job_logger.warning(
                "job %d: the lease was lost before the outcome (%s) could be recorded", lease.job_id, outcome
            )
            return
        job_logger.info("job %d %s%s", lease.job_id, outcome, f": {error}" if error else "")


@contextmanager
def job_log(path: Path, lease: queue.Lease) -> Iterator[logging.Logger]:
    """A logger appending to the job's log file (the one the API tails) and to the worker's own log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(f"flatmtl.worker.job.{lease.job_id}.{lease.token}")
    logger.setLevel(logging.INFO)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logger.addHandler(handler)
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        handler.close()
