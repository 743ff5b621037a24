"""The queue's guarantees on SQLite and PostgreSQL: no job claimed twice or lost, fencing, reaping,
priorities, idempotency, cancellation and retry."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from flatmtl.service import queue
from flatmtl.service.db import Database
from flatmtl.service.errors import ConflictError, LeaseLostError
from flatmtl.service.jobs import get_job, metric_history
from flatmtl.service.models import Event, Job
from flatmtl.service.specs.train import TrainSpec

T0 = datetime(2030, 1, 1, tzinfo=UTC)
LEASE = 30.0
DRAIN_JOBS = 2000
CLAIMERS = 8


def spec(name: str = "job", **fields: object) -> TrainSpec:
    return TrainSpec.model_validate({"problem": "toy", "name": name, **fields})


@pytest.mark.slow
def test_concurrent_claimers_drain_every_job_exactly_once(db: Database) -> None:
    with db.write() as session:
        session.add_all(
            Job(kind="train", name=f"j{i}", state="queued", spec={"i": i}, priority=i % 3, attempt=1, max_attempts=3)
            for i in range(DRAIN_JOBS)
        )
    claimed: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(CLAIMERS)

    def claimer(owner: str) -> None:
        try:
            start.wait()
            while (lease := queue.claim(db, owner, LEASE)) is not None:
                with lock:
                    claimed.append(lease.job_id)
                queue.complete(db, lease, "succeeded", result={"owner": owner})
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(CLAIMERS)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    elapsed = time.perf_counter() - began
    assert not errors, errors
    assert not [id_ for id_, n in Counter(claimed).items() if n > 1], "a job was claimed twice"
    with db.read() as session:
        all_ids = set(session.scalars(select(Job.id)))
        states = Counter(session.scalars(select(Job.state)))
        tokens = set(session.scalars(select(Job.lease_token)))
    assert set(claimed) == all_ids and len(all_ids) == DRAIN_JOBS, "a job was lost"
    assert states == {"succeeded": DRAIN_JOBS}
    assert tokens == {1}
    print(f"{db.url.get_backend_name()}: {DRAIN_JOBS} jobs drained by {CLAIMERS} claimers in {elapsed:.2f} s")


def test_priority_then_submission_order(db: Database) -> None:
    order = [("low", 0), ("high", 5), ("low2", 0), ("mid", 2), ("high2", 5)]
    ids = {name: queue.submit(db, spec(name), priority=p, now=T0)[0].id for name, p in order}
    claimed = []
    while (lease := queue.claim(db, "w", LEASE, now=T0)) is not None:
        claimed.append(lease.job_id)
    assert claimed == [ids["high"], ids["high2"], ids["mid"], ids["low"], ids["low2"]]


def test_stale_worker_is_fenced_out_after_its_lease_is_reaped(db: Database) -> None:
    job, _ = queue.submit(db, spec(), now=T0)
    stale = queue.claim(db, "stale", LEASE, now=T0)
    assert stale is not None and stale.job_id == job.id
    assert queue.reap(db, now=T0 + timedelta(seconds=LEASE + 1)) == {job.id: "queued"}
    fresh = queue.claim(db, "fresh", LEASE, now=T0 + timedelta(seconds=LEASE + 2))
    assert fresh is not None and fresh.job_id == job.id and fresh.token > stale.token and fresh.attempt == 2

    assert queue.heartbeat(db, stale, LEASE) == "lost"
    with pytest.raises(LeaseLostError):
        queue.record_metrics(db, stale, [(1, "loss", 9.0)])
    with pytest.raises(LeaseLostError):
        queue.complete(db, stale, "failed", error="late")
    queue.record_metrics(db, fresh, [(1, "loss", 1.0)])
    queue.complete(db, fresh, "succeeded", result={"by": "fresh"})
    with pytest.raises(LeaseLostError):
        queue.complete(db, stale, "succeeded", result={"by": "stale"})

    with db.read() as session:
        final = get_job(session, job.id)
        points = metric_history(session, job.id)
    assert (final.state, final.result, final.error, final.lease_owner) == ("succeeded", {"by": "fresh"}, None, None)
    assert [(p.step, p.value) for p in points] == [(1, 1.0)]


def test_heartbeat_extends_the_lease(db: Database) -> None:
    job, _ = queue.submit(db, spec(), now=T0)
    lease = queue.claim(db, "w", 10, now=T0)
    assert lease is not None
    assert queue.heartbeat(db, lease, 10, progress=0.25, now=T0 + timedelta(seconds=8)) == "ok"
    assert queue.reap(db, now=T0 + timedelta(seconds=15)) == {}
    with db.read() as session:
        assert get_job(session, job.id).progress == 0.25
    assert queue.reap(db, now=T0 + timedelta(seconds=19)) == {job.id: "queued"}


def test_reaper_fails_the_job_after_max_attempts(db: Database) -> None:
    job, _ = queue.submit(db, spec(), max_attempts=2, now=T0)
    now = T0
    for attempt, expected in ((1, "queued"), (2, "failed")):
        lease = queue.claim(db, f"w{attempt}", LEASE, now=now)
        assert lease is not None and lease.attempt == attempt
        now += timedelta(seconds=LEASE + 1)
        assert queue.reap(db, now=now) == {job.id: expected}
    assert queue.claim(db, "w3", LEASE, now=now) is None
    with db.read() as session:
        final = get_job(session, job.id)
    assert final.state == "failed" and final.attempt == 2 and "attempt 2 of 2" in (final.error or "")


def test_submit_returns_the_job_as_committed(db: Database) -> None:
    """The API answers with the returned job, built without reading it back: it must equal the stored row."""
    returned, created = queue.submit(db, spec("stored", epochs=2), priority=7, max_attempts=4, user="ann", now=T0)
    with db.read() as session:
        stored = get_job(session, returned.id)
        events = [event.kind for event in session.scalars(select(Event).where(Event.job_id == returned.id))]
    columns = [column.key for column in Job.__table__.columns]
    assert created and events == ["submitted"]
    assert {c: getattr(returned, c) for c in columns} == {c: getattr(stored, c) for c in columns}


def test_idempotency_key_returns_the_existing_job(db: Database) -> None:
    first, created = queue.submit(db, spec("a"), idempotency_key="key-1")
    again, created_again = queue.submit(db, spec("a"), idempotency_key="key-1")
    assert created and not created_again and again.id == first.id
    with pytest.raises(ConflictError, match="different spec"):
        queue.submit(db, spec("b"), idempotency_key="key-1")
    with db.read() as session:
        assert session.scalar(select(func.count(Job.id))) == 1


def test_cancel_and_retry(db: Database) -> None:
    queued, _ = queue.submit(db, spec("queued"))
    assert queue.cancel(db, queued.id).state == "cancelled"
    assert queue.claim(db, "w", LEASE) is None

    running, _ = queue.submit(db, spec("running"))
    lease = queue.claim(db, "w", LEASE)
    assert lease is not None and lease.job_id == running.id
    queue.cancel(db, running.id)
    assert queue.heartbeat(db, lease, LEASE) == "cancelled"
    with pytest.raises(LeaseLostError):
        queue.complete(db, lease, "succeeded")
    with pytest.raises(ConflictError, match="already cancelled"):
        queue.cancel(db, running.id)

    retried = queue.retry(db, running.id)
    assert (retried.state, retried.attempt, retried.finished_at) == ("queued", 1, None)
    again = queue.claim(db, "w2", LEASE)
    assert again is not None and again.job_id == running.id and again.token == lease.token + 1
    queue.complete(db, again, "succeeded")
    with pytest.raises(ConflictError, match="only failed or cancelled"):
        queue.retry(db, running.id)


def test_metric_downsampling_keeps_evenly_spaced_points(db: Database) -> None:
    job, _ = queue.submit(db, spec())
    lease = queue.claim(db, "w", LEASE)
    assert lease is not None
    queue.record_metrics(db, lease, [(step, "loss", float(step)) for step in range(101)])
    queue.record_metrics(db, lease, [(step, "acc", 1.0) for step in range(5)])
    with db.read() as session:
        full = metric_history(session, job.id, names=["loss"])
        sampled = metric_history(session, job.id, names=["loss"], max_points=11)
        short = metric_history(session, job.id, names=["acc"], max_points=11)
    assert [p.step for p in full] == list(range(101))
    # r is kept where floor(r * 10 / 100) changes: every tenth row, first and last included.
    assert [p.step for p in sampled] == list(range(0, 101, 10))
    assert [p.step for p in short] == list(range(5))
