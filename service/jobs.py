"""Read queries over jobs, trials, metrics and events (the API's and CLI's view of the queue).

``owner`` scopes a read to one user's jobs (None: every user's); another user's job reads as missing, so a
caller learns nothing of jobs that are not theirs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from flatmtl.service.errors import NotFoundError
from flatmtl.service.models import TERMINAL_STATES, Event, Job, Metric, Trial


def get_job(session: Session, job_id: int, *, owner: str | None = None) -> Job:
    job = session.get(Job, job_id)
    if job is None or (owner is not None and job.created_by != owner):
        raise NotFoundError(f"job {job_id} does not exist")
    return job


def list_jobs(
    session: Session,
    *,
    states: Sequence[str] = (),
    kinds: Sequence[str] = (),
    name: str | None = None,
    before: int | None = None,
    limit: int = 50,
    owner: str | None = None,
) -> tuple[list[Job], int | None]:
    """Newest first; returns the page and the cursor (an id) of the next page, if any."""
    query = select(Job).order_by(Job.id.desc()).limit(limit + 1)
    if owner is not None:
        query = query.where(Job.created_by == owner)
    if states:
        query = query.where(Job.state.in_(states))
    if kinds:
        query = query.where(Job.kind.in_(kinds))
    if name is not None:
        query = query.where(Job.name == name)
    if before is not None:
        query = query.where(Job.id < before)
    jobs = list(session.scalars(query))
    if len(jobs) > limit:
        return jobs[:limit], jobs[limit - 1].id
    return jobs, None


def list_trials(session: Session, job_id: int, *, owner: str | None = None) -> list[Trial]:
    get_job(session, job_id, owner=owner)
    return list(session.scalars(select(Trial).where(Trial.job_id == job_id).order_by(Trial.trial_index)))


def list_events(session: Session, job_id: int, *, owner: str | None = None) -> list[Event]:
    get_job(session, job_id, owner=owner)
    return list(session.scalars(select(Event).where(Event.job_id == job_id).order_by(Event.id)))


@dataclass(frozen=True)
class Point:
    name: str
    trial_index: int | None
    step: int
    value: float | None


def metric_history(
    session: Session,
    job_id: int,
    *,
    names: Sequence[str] = (),
    trial_index: int | None = None,
    max_points: int | None = None,
    owner: str | None = None,
) -> list[Point]:
    """Each series (name, trial) ordered by step; with ``max_points``, evenly spaced points per series.

    Downsampling happens in SQL: row r of a series of n is kept when floor(r (m-1) / (n-1)) differs
    from the previous row's, which keeps exactly m points, the first and the last among them.
    """
    get_job(session, job_id, owner=owner)
    series = (Metric.name, func.coalesce(Metric.trial_index, -1))
    rank = func.row_number().over(partition_by=series, order_by=(Metric.step, Metric.id)) - 1
    count = func.count().over(partition_by=series)
    inner = select(Metric.name, Metric.trial_index, Metric.step, Metric.value, rank.label("r"), count.label("n")).where(
        Metric.job_id == job_id
    )
    if names:
        inner = inner.where(Metric.name.in_(names))
    if trial_index is not None:
        inner = inner.where(Metric.trial_index == trial_index)
    ranked = inner.subquery()
    query = select(ranked.c.name, ranked.c.trial_index, ranked.c.step, ranked.c.value)
    if max_points is not None:
        m = max(max_points, 2) - 1
        r, n = ranked.c.r, ranked.c.n
        keep = (n <= max_points) | (r == 0) | ((r * m) // (n - 1) != ((r - 1) * m) // (n - 1))
        query = query.where(keep)
    query = query.order_by(ranked.c.name, func.coalesce(ranked.c.trial_index, -1), ranked.c.r)
    return [Point(name, trial, step, value) for name, trial, step, value in session.execute(query)]


def unfinished_specs(session: Session) -> list[dict[str, Any]]:
    """The specs of every job not yet in a terminal state (what a worker may still need to run)."""
    return list(session.scalars(select(Job.spec).where(Job.state.not_in(TERMINAL_STATES))))
