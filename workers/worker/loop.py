"""``flatmtl worker``: claim a job, keep its lease alive, run it on Ray, record the outcome; reap meanwhile.

While a job runs, a keeper thread heartbeats its lease (every quarter of the lease time) and reports the
progress; ``cancelled`` or ``lost`` stop the run within one heartbeat plus Tune's stop. The same thread and
the idle loop run the reaper, so a dead worker's job is requeued even when every live worker is busy.
Writes carry the lease's fencing token: once a job is cancelled or requeued, nothing this worker still
sends lands. An attempt > 1 resumes each trial from its run directory's checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from flatmtl.service import capabilities, code, data_roots, jobs, queue
from flatmtl.service.db import Database
from flatmtl.service.errors import LeaseLostError
from flatmtl.service.retry import Backoff, GaveUpError, describe, is_transient, retrying
from flatmtl.service.settings import Settings
from flatmtl.workers.training import ConfigError, RunOptions, check_runnable
from flatmtl.workers.worker.advertised import local_capabilities
from flatmtl.workers.worker.failures import os_error
from flatmtl.workers.worker.job import JobRun
from flatmtl.workers.worker.plan import JobPaths, JobPlan, plan_job
from flatmtl.workers.worker.storage import JobStorage
from flatmtl.workers.worker.trials import ClusterTooSmallError, RaySettings, ensure_ray, run_plan

log = logging.getLogger("flatmtl.worker")
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
HONEST_SHARE = 0.5
"""Share of the lease after the last heartbeat that landed at which the run is stopped: the rest is for stopping."""
RELEASED = ("shutdown", "unreachable")
"""Stop reasons after which the job goes back to the queue on the same attempt."""
T = TypeVar("T")


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Keeper(threading.Thread):
    """Heartbeats one lease and runs the reaper until stopped; tells ``on_stop`` why the job must end.

    Heartbeats that fail (the database is unreachable) are retried with backoff. A watchdog re-armed by
    each heartbeat that lands stops the run (``unreachable``) once half the lease has passed without one,
    even while a heartbeat hangs: the run has then ended before the lease can expire and another worker
    claim the job.
    """

    def __init__(
        self,
        db: Database,
        lease: queue.Lease,
        lease_seconds: float,
        *,
        progress: Callable[[], float],
        on_stop: Callable[[str], None],
        reap: Callable[[], None],
        since: float | None = None,
    ) -> None:
        super().__init__(name=f"keeper-{lease.job_id}", daemon=True)
        self.db, self.lease, self.lease_seconds = db, lease, lease_seconds
        self.progress, self.on_stop, self.reap = progress, on_stop, reap
        self.interval = min(lease_seconds / 4, 10.0)
        self._done = threading.Event()
        self._watchdog: threading.Timer | None = None
        self._arm(time.monotonic() if since is None else since)

    def _arm(self, since: float) -> None:
        """Stop the run half a lease after ``since``, when the last heartbeat that landed was sent."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        delay = max(0.0, since + self.lease_seconds * HONEST_SHARE - time.monotonic())
        self._watchdog = threading.Timer(delay, self._unreachable)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _unreachable(self) -> None:
        log.warning(
            "job %d: no heartbeat landed for %.1f s (half the lease); stopping the run before the lease expires",
            self.lease.job_id,
            self.lease_seconds * HONEST_SHARE,
        )
        self._done.set()
        self.on_stop("unreachable")

    def run(self) -> None:
        backoff = Backoff(first_s=min(0.2, self.interval), cap_s=self.interval)
        wait = self.interval
        while not self._done.wait(wait):
            sent = time.monotonic()
            try:
                status = queue.heartbeat(self.db, self.lease, self.lease_seconds, progress=self.progress())
            except Exception as error:  # the database may come back before the lease runs out
                if is_transient(error):
                    log.warning("heartbeat of job %d failed: %s", self.lease.job_id, describe(error))
                else:
                    log.exception("heartbeat of job %d failed", self.lease.job_id)
                wait = backoff.next_delay()
                continue
            if self._done.is_set():
                return
            if status != "ok":
                self._stop_watchdog()
                self.on_stop(status)
                return
            self._arm(sent)
            backoff.reset()
            wait = self.interval
            self.reap()

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()

    def finish(self) -> None:
        self._done.set()
        self._stop_watchdog()
        if self.is_alive():
            self.join()


@dataclass
class WorkerOptions:
    owner: str
    poll_s: float = 1.0
    max_jobs: int | None = None
    exit_when_idle: bool = False


class Worker:
    """Claims and runs jobs. Database outages of any length are ridden out with backoff (nothing here exits
    on one); ``shutdown`` (the first SIGTERM or SIGINT) stops claiming and gives the current job the grace
    period to finish before it is stopped and released; ``force`` (a second signal) skips the rest."""

    def __init__(self, settings: Settings, ray_settings: RaySettings, options: WorkerOptions) -> None:
        self.settings, self.ray_settings, self.options = settings, ray_settings, options
        self.db = Database.from_settings(settings)
        self.current: JobRun | None = None
        self._shutdown = threading.Event()
        self._forced = threading.Event()
        self._grace: threading.Timer | None = None
        self._grace_lock = threading.Lock()
        self._handles_signals = False
        self._last_reap = 0.0
        self._last_advert = 0.0
        self.capabilities: capabilities.Capabilities | None = None

    @property
    def forced(self) -> bool:
        return self._forced.is_set()

    def shutdown(self) -> None:
        """Stop claiming; the running job may finish within the grace period, else it is stopped and released."""
        if self._shutdown.is_set():
            return
        self._shutdown.set()
        run = self.current
        if run is None:
            log.info("shutting down: no job running")
            return
        self._start_grace(run)

    def _start_grace(self, run: JobRun) -> None:
        with self._grace_lock:
            if self._grace is not None:
                return
            grace = self.settings.shutdown_grace_s
            log.info("job %d may run %g s more before it is stopped and released", run.lease.job_id, grace)
            self._grace = threading.Timer(grace, run.stop, args=("shutdown",))
            self._grace.daemon = True
            self._grace.start()

    def force(self) -> None:
        """Stop the current job now and give up on database retries."""
        self._forced.set()
        self._shutdown.set()
        run = self.current
        if run is not None:
            log.warning("forced shutdown: stopping job %d now", run.lease.job_id)
            run.stop("shutdown")

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._shutdown.is_set():
            log.warning("%s again: forcing the shutdown", name)
            self.force()
            return
        log.info("%s: shutting down", name)
        self.shutdown()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT shut down gracefully, a second one forces. Called again once Ray has started,
        because ``ray.init`` installs its own SIGTERM handler, which exits at once."""
        if threading.current_thread() is not threading.main_thread():
            return
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Tune would take SIGINT over while a job runs
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.on_signal)
        self._handles_signals = True

    def _retrying(self, call: Callable[[], T], what: str, give_up: Callable[[], bool] | None = None) -> T:
        return retrying(
            call,
            what=what,
            log=log,
            give_up=give_up or (lambda: self._forced.is_set()),
            sleep=self._forced.wait,
        )

    def reap(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_reap < self.settings.lease_seconds / 2:
            return
        self._last_reap = now
        try:
            for job_id, state in queue.reap(self.db).items():
                log.info("reaped job %d: lease expired, now %s", job_id, state)
            self.prune_code()
        except Exception as error:
            if not is_transient(error):
                log.exception("reaping failed")
                return
            log.warning("reaping failed: %s", describe(error))

    def prune_code(self) -> None:
        """Delete the shipped code that no unfinished job names and nobody used for ``code_retention_days``."""
        retention_days = self.settings.code_retention_days
        for digest in code.prune(self.settings.artifacts, self._code_in_use, retention_days * 86400):
            log.info("deleted shipped code %s: no unfinished job names it, unused for %g days", digest, retention_days)

    def _code_in_use(self) -> set[str]:
        """The code digests the unfinished jobs name."""
        with self.db.read() as session:
            return {digest for spec in jobs.unfinished_specs(session) if (digest := code.spec_digest(spec))}

    def advertise(self, *, force: bool = False) -> None:
        """Refresh what this worker can run in the database, at most every heartbeat interval."""
        now = time.monotonic()
        recent = now - self._last_advert < min(self.settings.lease_seconds / 4, 10.0)
        if self.capabilities is None or (recent and not force):
            return
        self._last_advert = now
        try:
            capabilities.advertise(self.db, self.options.owner, self.capabilities)
        except Exception as error:
            if not is_transient(error):
                log.exception("advertising failed")
                return
            log.warning("advertising failed: %s", describe(error))

    def housekeeping(self) -> None:
        """Between claims and after each heartbeat: reap expired leases, refresh the advertisement."""
        self.reap()
        self.advertise()

    def _refusal(self, spec: dict[str, Any]) -> str | None:
        return None if self.capabilities is None else self.capabilities.refusal(spec)

    def run(self) -> int:
        """Claim and run jobs until shut down (or ``max_jobs`` ran, or idle with ``exit_when_idle``).

        Expired leases are reaped before Ray starts, so a dead worker's job waits for no Ray start-up.
        """
        ran = 0
        try:
            self._retrying(self.db.migrate, "migrating the database", give_up=self._shutdown.is_set)
            self.reap(force=True)
            if self._shutdown.is_set():
                return ran
            ensure_ray(self.ray_settings)
            self.capabilities = local_capabilities()
            self.advertise(force=True)
            if getattr(self, "_handles_signals", False):
                self.install_signal_handlers()
            log.info("worker %s polling %s", self.options.owner, self.db.url.render_as_string(hide_password=True))
            backoff = Backoff(cap_s=max(self.options.poll_s, 10.0))
            while not self._shutdown.is_set():
                if self.options.max_jobs is not None and ran >= self.options.max_jobs:
                    break
                self.housekeeping()
                claimed_at = time.monotonic()
                try:
                    lease = queue.claim(self.db, self.options.owner, self.settings.lease_seconds, refusal=self._refusal)
                except Exception as error:
                    if not is_transient(error):
                        raise
                    delay = backoff.next_delay()
                    log.warning("claiming failed: %s; retry in %.1f s", describe(error), delay)
                    self._shutdown.wait(delay)
                    continue
                backoff.reset()
                if lease is None:
                    if self.options.exit_when_idle:
                        break
                    self._shutdown.wait(self.options.poll_s)
                    continue
                self.run_job(lease, claimed_at)
                ran += 1
        except GaveUpError as error:
            log.warning("%s", error)
        finally:
            log.info("worker %s stopped after %d job(s)", self.options.owner, ran)
            if self.capabilities is not None:
                with contextlib.suppress(Exception):  # unreachable: the advertisement just ages out
                    capabilities.retire(self.db, self.options.owner)
            self.db.dispose()
        return ran

    def run_job(self, lease: queue.Lease, claimed_at: float | None = None) -> None:
        paths = JobPaths(self.settings.artifacts, lease.job_id)
        with ExitStack() as stack:
            try:
                job_logger = stack.enter_context(job_log(paths.log, lease))
            except OSError as error:  # no space or no permission: the job fails, the worker goes on
                self._complete(lease, "failed", None, f"cannot write the job's log: {os_error(error)}", log)
                return
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flatmtl-code-")))
            self._run_job(lease, paths, job_logger, claimed_at, scratch)

    def _unpack_code(self, plan: JobPlan, scratch: Path) -> Path | None:
        """The job's shipped code unpacked under ``scratch``; None for a job without. CodeArchiveError (a
        ValueError) for an archive that is missing, over the limit or has members escaping its root."""
        digests = {trial.spec.code for trial in plan.trials} - {None}
        if not digests:
            return None
        (digest,) = digests
        into = scratch / "code"
        into.mkdir()
        return code.unpack(self.settings.artifacts, digest, into, self.settings.code_max_bytes)

    def _run_job(
        self, lease: queue.Lease, paths: JobPaths, job_logger: logging.Logger, claimed_at: float | None, scratch: Path
    ) -> None:
        job_logger.info("attempt %d claimed by %s (lease token %d)", lease.attempt, lease.owner, lease.token)
        try:
            outside = data_roots.confine(lease.spec, self.settings.allowed_data)
            if outside:  # queued before the roots changed, or not through the API
                raise ValueError("; ".join(f"{p.field} = {p.value!r}: {p.message} ({p.allowed})" for p in outside))
            plan = plan_job(lease.job_id, lease.spec, self.settings.artifacts)
            code_dir = self._unpack_code(plan, scratch)
            for trial in plan.trials:
                if trial.spec.code is None:  # shipped code is imported and checked by the ranks, never here
                    check_runnable(trial.spec, f"trial {trial.index}" if plan.kind == "sweep" else "")
        except (ConfigError, ValueError) as error:
            self._complete(lease, "failed", None, f"the job cannot run: {error}", job_logger)
            return
        job_storage = JobStorage.for_job(self.ray_settings.storage, lease.job_id, paths.ray)
        run = JobRun(self.db, lease, plan, paths, job_logger, job_storage)
        self.current = run
        if self._shutdown.is_set():
            self._start_grace(run)
        keeper = Keeper(
            self.db,
            lease,
            self.settings.lease_seconds,
            progress=run.progress,
            on_stop=run.stop,
            reap=self.housekeeping,
            since=claimed_at,
        )
        keeper.start()
        try:
            todo = self._retrying(run.load_previous, f"job {lease.job_id}: reading earlier attempts", run.should_stop)
            if todo and not run.should_stop():
                options = RunOptions(
                    device="cuda" if plan.resources["gpus"] > 0 else "cpu",
                    threads=max(1, int(plan.resources["cpus"])),
                )
                try:
                    run_plan(
                        plan,
                        run,
                        self.ray_settings,
                        job_storage=job_storage,
                        attempt=lease.attempt,
                        options=options,
                        indices=todo,
                        code_dir=code_dir,
                    )
                except Exception as tune_error:
                    if not run.all_ended():
                        raise
                    # Tune's own bookkeeping failed after the trials had ended (reading back an error file
                    # that a full disk truncated, say): the trials' outcomes say what happened.
                    job_logger.warning("Ray Tune failed after every trial had ended: %r", tune_error)
            if not run.should_stop():
                outcome, result, error = run.outcome()
                self._complete(lease, outcome, result, error, job_logger)
        except GaveUpError:
            pass  # the run was stopped while the database was unreachable: handled below
        except OSError as error:
            job_logger.exception("attempt %d failed", lease.attempt)
            self._complete(lease, "failed", None, os_error(error), job_logger)
        except (ClusterTooSmallError, ValueError) as error:
            self._complete(lease, "failed", None, str(error), job_logger)
        except Exception as error:
            job_logger.exception("attempt %d failed", lease.attempt)
            if self._shutdown.is_set():  # Ray going down with the machine is no fault of the job's
                run.stop("shutdown")
            else:
                self._complete(lease, "failed", None, f"{type(error).__name__}: {error}", job_logger)
        finally:
            keeper.finish()
            with self._grace_lock:
                if self._grace is not None:
                    self._grace.cancel()
                self._grace = None
            self.current = None
        if run.should_stop():
            job_logger.info("attempt %d ended without an outcome: %s", lease.attempt, run.stop_reason)
            if run.stop_reason in RELEASED:
                self._release(lease, run.stop_reason or "", job_logger)

    def _release(self, lease: queue.Lease, reason: str, job_logger: logging.Logger) -> None:
        why = {"shutdown": "the worker shut down", "unreachable": "the database was unreachable for half the lease"}
        message = f"released by {lease.owner}: {why.get(reason, reason)}"
        try:
            self._retrying(lambda: queue.release(self.db, lease, message), f"job {lease.job_id}: releasing")
        except LeaseLostError:
            job_logger.info("job %d was requeued or cancelled meanwhile; nothing to release", lease.job_id)
        except GaveUpError as error:
            job_logger.warning("job %d not released (%s); it is requeued when its lease expires", lease.job_id, error)
        else:
            job_logger.info("job %d released to the queue (%s); its checkpoints let it resume", lease.job_id, reason)

    def _complete(
        self,
        lease: queue.Lease,
        outcome: queue.Outcome,
        result: dict | None,
        error: str | None,
        job_logger: logging.Logger,
    ) -> None:
        """Record the outcome, retried through a database outage of any length (a forced shutdown gives up)."""
        try:
            self._retrying(
                lambda: queue.complete(self.db, lease, outcome, result=result, error=error),
                f"job {lease.job_id}: recording {outcome}",
            )
        except LeaseLostError:
            job_logger.warning(
                "job %d: the lease was lost before the outcome (%s) could be recorded", lease.job_id, outcome
            )
            return
        except GaveUpError as gave_up:
            job_logger.warning("job %d: outcome %s not recorded: %s", lease.job_id, outcome, gave_up)
            return
        job_logger.info("job %d %s%s", lease.job_id, outcome, f": {error}" if error else "")


class JobLogHandler(logging.FileHandler):
    """The job's log file. A line it cannot write (a full disk) neither ends the job nor goes unnoticed: the
    job's lines also reach the worker's own log, which says once that the file lost lines and, at the end, how many."""

    def __init__(self, path: Path, job_id: int) -> None:
        super().__init__(path, encoding="utf-8")
        self.job_id = job_id
        self.dropped = 0

    def handleError(self, record: logging.LogRecord) -> None:
        self.dropped += 1
        if self.dropped == 1:
            error = sys.exc_info()[1]
            reason = os_error(error) if isinstance(error, OSError) else repr(error)
            log.warning(
                "job %d: its log %s cannot be written (%s); its lines stay in this log",
                self.job_id,
                self.baseFilename,
                reason,
            )

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # the buffered tail could not be written either
            self.dropped += 1
        if self.dropped:
            log.warning(
                "job %d: its log %s is missing lines (%d writes failed)", self.job_id, self.baseFilename, self.dropped
            )


@contextmanager
def job_log(path: Path, lease: queue.Lease) -> Iterator[logging.Logger]:
    """A logger appending to the job's log file (the one the API tails) and to the worker's own log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(f"flatmtl.worker.job.{lease.job_id}.{lease.token}")
    logger.setLevel(logging.INFO)
    handler = JobLogHandler(path, lease.job_id)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logger.addHandler(handler)
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        handler.close()
