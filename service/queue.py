"""The job queue: submit, claim with a lease and a fencing token, heartbeat, complete, reap, cancel, retry.

Every claim increments ``jobs.lease_token``; heartbeats, completions and worker writes are accepted
only while the job is running under the token the worker was given. A worker whose lease expired
and was reaped (or whose job was cancelled) therefore can never overwrite the job's new owner.
PostgreSQL claims with ``SELECT ... FOR UPDATE SKIP LOCKED``; SQLite serialises writers with
``BEGIN IMMEDIATE`` (see :mod:`flatmtl.service.db`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import JSON, Connection, bindparam, case, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flatmtl.service.db import Database
from flatmtl.service.errors import ConflictError, LeaseLostError, NotFoundError
from flatmtl.service.models import TERMINAL_STATES, Event, Job, Metric, Trial, UTCDateTime, utcnow
from flatmtl.service.specs.sweep import SweepSpec
from flatmtl.service.specs.train import TrainSpec

HeartbeatStatus = Literal["ok", "cancelled", "lost"]
Outcome = Literal["succeeded", "partially_failed", "failed"]


@dataclass(frozen=True)
class Lease:
    """What a worker holds while it runs a job; ``token`` fences every write it makes."""

    job_id: int
    token: int
    owner: str
    attempt: int
    expires_at: datetime
    kind: str
    spec: dict[str, Any]


# The hot paths (claim, heartbeat, complete) run prebuilt Core statements on the tables: building
# ORM statements per call cost more CPU than the database work itself.
JOBS = Job.__table__
_NEXT_QUEUED = (
    select(JOBS.c.id)
    .where(JOBS.c.state == "queued")
    .order_by(JOBS.c.priority.desc(), JOBS.c.id)
    .limit(1)
    .with_for_update(skip_locked=True)
)
CLAIM_WINDOW = 64
"""How many of the first queued jobs a worker with a refusal filter looks at per claim."""
_FIRST_QUEUED = (
    select(JOBS.c.id, JOBS.c.spec)
    .where(JOBS.c.state == "queued")
    .order_by(JOBS.c.priority.desc(), JOBS.c.id)
    .limit(CLAIM_WINDOW)
    .with_for_update(skip_locked=True)
)
_TAKE = (
    update(JOBS)
    .where(JOBS.c.id == bindparam("b_id"), JOBS.c.state == "queued")
    .values(
        state="running",
        lease_owner=bindparam("b_owner"),
        lease_token=JOBS.c.lease_token + 1,
        lease_expires_at=bindparam("b_expires", type_=UTCDateTime),
        started_at=func.coalesce(JOBS.c.started_at, bindparam("b_now", type_=UTCDateTime)),
    )
    .returning(JOBS.c.lease_token, JOBS.c.attempt, JOBS.c.kind, JOBS.c.spec)
)
_OWNED = (JOBS.c.id == bindparam("b_id"), JOBS.c.lease_token == bindparam("b_token"), JOBS.c.state == "running")
_EXTEND = (
    update(JOBS)
    .where(*_OWNED)
    .values(
        lease_expires_at=bindparam("b_expires", type_=UTCDateTime),
        progress=func.coalesce(bindparam("b_progress"), JOBS.c.progress),
    )
)
_FINISH = (
    update(JOBS)
    .where(*_OWNED)
    .values(
        state=bindparam("b_outcome"),
        finished_at=bindparam("b_now", type_=UTCDateTime),
        result=bindparam("b_result", type_=JSON),
        error=bindparam("b_error"),
        progress=case((bindparam("b_outcome") != "failed", 1.0), else_=JOBS.c.progress),
        lease_owner=None,
        lease_expires_at=None,
    )
)
_EVENT = insert(Event.__table__)
_INSERT_JOB = insert(JOBS)


def finite(value: Any) -> Any:
    """JSON with non-finite floats as null: neither PostgreSQL's JSON nor SQLite's REAL keep NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def _event(connection: Connection | Session, job_id: int, kind: str, message: str = "", **data: Any) -> None:
    connection.execute(
        _EVENT, {"job_id": job_id, "kind": kind, "message": message, "data": data or None, "created_at": utcnow()}
    )


def submit(
    db: Database,
    spec: TrainSpec | SweepSpec,
    *,
    priority: int = 0,
    max_attempts: int = 3,
    idempotency_key: str | None = None,
    user: str | None = None,
    now: datetime | None = None,
) -> tuple[Job, bool]:
    """Queue a job, committed before returning; ``(job, created)``.

    A repeated idempotency key returns the existing job (``created`` false) when the spec is the
    same, and raises ConflictError when it differs, so a retried request never queues twice.
    """
    document = spec.model_dump(mode="json")
    if idempotency_key is not None:
        existing = _by_key(db, idempotency_key, spec.kind, document)
        if existing is not None:
            return existing, False
    values = {
        "kind": spec.kind,
        "name": spec.name,
        "state": "queued",
        "spec": document,
        "priority": priority,
        "idempotency_key": idempotency_key,
        "created_by": user,
        "attempt": 1,
        "max_attempts": max_attempts,
        "lease_token": 0,
        "created_at": now or utcnow(),
    }
    try:
        with db.write_connection() as connection:
            job_id = connection.execute(_INSERT_JOB, values).inserted_primary_key[0]
            _event(connection, job_id, "submitted", f"{spec.kind} job submitted", user=user, priority=priority)
    except IntegrityError:
        if idempotency_key is None:
            raise
        existing = _by_key(db, idempotency_key, spec.kind, document)
        if existing is None:
            raise
        return existing, False
    return Job(id=job_id, **values), True


def _by_key(db: Database, key: str, kind: str, document: dict[str, Any]) -> Job | None:
    with db.read() as session:
        job = session.scalar(select(Job).where(Job.idempotency_key == key))
    if job is not None and (job.kind != kind or job.spec != document):
        raise ConflictError(f"idempotency key {key!r} was used for job {job.id} with a different spec")
    return job


def claim(
    db: Database,
    owner: str,
    lease_seconds: float,
    *,
    now: datetime | None = None,
    refusal: Callable[[dict[str, Any]], str | None] | None = None,
) -> Lease | None:
    """The highest-priority, oldest queued job, now running under a new lease; None if none is queued.

    ``refusal`` (the worker's :meth:`Capabilities.refusal`) skips jobs this worker cannot run (a problem it
    lacks, GPUs it has not): they stay queued for a worker that can."""
    now = now or utcnow()
    expires = now + timedelta(seconds=lease_seconds)
    with db.write_connection() as connection:
        if refusal is None:
            job_id = connection.scalar(_NEXT_QUEUED)
        else:
            rows = connection.execute(_FIRST_QUEUED)
            job_id = next((row.id for row in rows if refusal(row.spec) is None), None)
        if job_id is None:
            return None
        row = connection.execute(_TAKE, {"b_id": job_id, "b_owner": owner, "b_expires": expires, "b_now": now}).one()
        _event(
            connection,
            job_id,
            "claimed",
            f"claimed by {owner}",
            owner=owner,
            attempt=row.attempt,
            token=row.lease_token,
        )
    return Lease(job_id, row.lease_token, owner, row.attempt, expires, row.kind, row.spec)


def heartbeat(
    db: Database, lease: Lease, lease_seconds: float, *, progress: float | None = None, now: datetime | None = None
) -> HeartbeatStatus:
    """Extend the lease (one UPDATE fenced by the token). 'cancelled' or 'lost' tell the worker to stop."""
    now = now or utcnow()
    params = {
        "b_id": lease.job_id,
        "b_token": lease.token,
        "b_expires": now + timedelta(seconds=lease_seconds),
        "b_progress": None if progress is None else min(max(float(progress), 0.0), 1.0),
    }
    with db.write_connection() as connection:
        result = connection.execute(_EXTEND, params)
        if result.rowcount == 1:
            return "ok"
        state = connection.scalar(select(Job.state).where(Job.id == lease.job_id, Job.lease_token == lease.token))
    return "cancelled" if state == "cancelled" else "lost"


def complete(
    db: Database,
    lease: Lease,
    outcome: Outcome,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    now: datetime | None = None,
) -> None:
    """Mark the job with its outcome; LeaseLostError if the token is stale (the write is refused)."""
    now = now or utcnow()
    params = {
        "b_id": lease.job_id,
        "b_token": lease.token,
        "b_outcome": outcome,
        "b_now": now,
        "b_result": finite(result),
        "b_error": error,
    }
    with db.write_connection() as connection:
        updated = connection.execute(_FINISH, params)
        if updated.rowcount != 1:
            raise LeaseLostError(f"job {lease.job_id}: lease token {lease.token} of {lease.owner} is no longer valid")
        _event(connection, lease.job_id, outcome, error or "", owner=lease.owner, attempt=lease.attempt)


def release(db: Database, lease: Lease, reason: str) -> None:
    """Give a job back to the queue unfinished, on the same attempt (a worker shutting down, or one that could not
    heartbeat); LeaseLostError if the token is stale. Its checkpoints let the next worker resume it."""
    with db.write_connection() as connection:
        updated = connection.execute(
            update(JOBS).where(*_OWNED).values(state="queued", lease_owner=None, lease_expires_at=None),
            {"b_id": lease.job_id, "b_token": lease.token},
        )
        if updated.rowcount != 1:
            raise LeaseLostError(f"job {lease.job_id}: lease token {lease.token} of {lease.owner} is no longer valid")
        _event(connection, lease.job_id, "released", reason, owner=lease.owner, attempt=lease.attempt)


@contextmanager
def fenced(db: Database, lease: Lease) -> Iterator[Connection]:
    """A write transaction that commits only while ``lease`` still owns the job (row locked meanwhile)."""
    with db.write_connection() as connection:
        row = connection.execute(
            select(Job.state, Job.lease_token).where(Job.id == lease.job_id).with_for_update()
        ).one_or_none()
        if row is None or row.state != "running" or row.lease_token != lease.token:
            raise LeaseLostError(f"job {lease.job_id}: lease token {lease.token} of {lease.owner} is no longer valid")
        yield connection


def record_metrics(
    db: Database, lease: Lease, points: Iterable[tuple[int, str, float]], *, trial_index: int | None = None
) -> None:
    """Append (step, name, value) points to the job's history, fenced by the lease."""
    now = utcnow()
    rows = [
        {
            "job_id": lease.job_id,
            "trial_index": trial_index,
            "step": step,
            "name": name,
            "value": value,
            "created_at": now,
        }
        for step, name, value in points
    ]
    with fenced(db, lease) as connection:
        if rows:
            connection.execute(insert(Metric), rows)


def record_trial(
    db: Database,
    lease: Lease,
    trial_index: int,
    *,
    config: dict[str, Any],
    state: str,
    best_metric: float | None = None,
    result: dict[str, Any] | None = None,
) -> None:
    """Create or update one trial of a sweep, fenced by the lease."""
    now = utcnow()
    values = {
        "config": finite(config),
        "state": state,
        "best_metric": finite(best_metric),
        "result": finite(result),
        "updated_at": now,
    }
    with fenced(db, lease) as connection:
        updated = connection.execute(
            update(Trial).where(Trial.job_id == lease.job_id, Trial.trial_index == trial_index).values(**values)
        )
        if updated.rowcount == 0:
            connection.execute(
                insert(Trial).values(job_id=lease.job_id, trial_index=trial_index, created_at=now, **values)
            )


def reap(db: Database, *, now: datetime | None = None) -> dict[int, str]:
    """Requeue running jobs whose lease expired (attempt + 1), or fail them after max_attempts.

    Returns ``{job_id: new_state}``. Safe to run from every worker at once: rows another reaper holds
    are skipped, and the state check in the UPDATE makes a second pass a no-op.
    """
    now = now or utcnow()
    changed: dict[int, str] = {}
    with db.write_connection() as connection:
        expired = connection.execute(
            select(Job.id, Job.attempt, Job.max_attempts, Job.lease_owner)
            .where(Job.state == "running", Job.lease_expires_at < now)
            .order_by(Job.id)
            .with_for_update(skip_locked=True)
        ).all()
        for job_id, attempt, max_attempts, owner in expired:
            values: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}
            if attempt >= max_attempts:
                reason = f"lease of {owner} expired on attempt {attempt} of {max_attempts}"
                values.update(state="failed", finished_at=now, error=reason)
            else:
                reason = f"lease of {owner} expired; requeued as attempt {attempt + 1} of {max_attempts}"
                values.update(state="queued", attempt=attempt + 1)
            connection.execute(update(Job).where(Job.id == job_id, Job.state == "running").values(**values))
            _event(connection, job_id, "lease_expired", reason, owner=owner, attempt=attempt)
            changed[job_id] = values["state"]
    return changed


def _locked_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id, with_for_update=True)
    if job is None:
        raise NotFoundError(f"job {job_id} does not exist")
    return job


def cancel(db: Database, job_id: int, *, user: str | None = None, now: datetime | None = None) -> Job:
    """Cancel a queued or running job; a running job's worker learns it at its next heartbeat."""
    now = now or utcnow()
    with db.write() as session:
        job = _locked_job(session, job_id)
        if job.state in TERMINAL_STATES:
            raise ConflictError(f"job {job_id} is already {job.state}; only queued or running jobs can be cancelled")
        job.state, job.finished_at, job.lease_owner, job.lease_expires_at = "cancelled", now, None, None
        _event(session, job_id, "cancelled", f"cancelled by {user or 'unknown'}", user=user)
    return job


def retry(db: Database, job_id: int, *, user: str | None = None) -> Job:
    """Queue a failed or cancelled job again, as attempt 1; its checkpoints let it resume."""
    with db.write() as session:
        job = _locked_job(session, job_id)
        if job.state not in ("failed", "cancelled"):
            raise ConflictError(f"job {job_id} is {job.state}; only failed or cancelled jobs can be retried")
        job.state, job.attempt, job.error, job.result, job.finished_at = "queued", 1, None, None, None
        job.lease_owner, job.lease_expires_at = None, None
        _event(session, job_id, "retried", f"retried by {user or 'unknown'}", user=user)
    return job
