"""SQLAlchemy 2.0 tables of the control plane.

Timestamps are timezone-aware UTC everywhere (SQLite stores them naive; ``UTCDateTime`` restores the
zone). Schema changes go through Alembic (``service/migrations``), never ``create_all``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

JOB_STATES = ("queued", "running", "succeeded", "partially_failed", "failed", "cancelled")
TERMINAL_STATES = ("succeeded", "partially_failed", "failed", "cancelled")
"""``succeeded``: every trial of the job succeeded (or was ended early by its sweep's scheduler);
``partially_failed``: a sweep some of whose trials failed while others reported its metric (the result counts
them and names the best of the others); ``failed``: nothing usable, or the job could not run."""
JOB_KINDS = ("train", "sweep")
TRIAL_STATES = ("pending", "running", "succeeded", "failed", "stopped")
SCOPES = ("read", "read_all", "submit", "code", "admin")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, whatever the backend stores."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, dict[str, Any]: JSON}


class Job(Base):
    """A train or sweep job and its lease. ``lease_token`` only grows: it fences stale workers out."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_claim", "state", text("priority DESC"), "id"),
        Index("ix_jobs_lease", "state", "lease_expires_at"),
        Index("ix_jobs_kind_state", "kind", "state"),
        Index("ix_jobs_name", "name"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16), default="queued")
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    created_by: Mapped[str | None] = mapped_column(String(100))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_token: Mapped[int] = mapped_column(BigInteger, default=0)
    lease_expires_at: Mapped[datetime | None]
    progress: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Trial(Base):
    """One trial of a sweep: its sampled config, state and best value of the sweep's metric."""

    __tablename__ = "trials"
    __table_args__ = (UniqueConstraint("job_id", "trial_index", name="uq_trials_job_index"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    trial_index: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    best_metric: Mapped[float | None] = mapped_column(Float)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Metric(Base):
    """One scalar of a job's history (optionally of one trial): loss per task, delta_m, step time..."""

    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_job_name_step", "job_id", "name", "step"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    trial_index: Mapped[int | None] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(BigInteger)
    name: Mapped[str] = mapped_column(String(200))
    value: Mapped[float | None] = mapped_column(Float, doc="NULL for a non-finite value (SQLite has no NaN).")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Event(Base):
    """The audit trail of a job: submitted, claimed, requeued, cancelled, finished..."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """A user's API token: only its HMAC is stored; ``prefix`` identifies it in listings."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    user: Mapped[str] = mapped_column(String(100), index=True)
    prefix: Mapped[str] = mapped_column(String(32))
    token_hash: Mapped[str] = mapped_column(String(128), unique=True)
    scopes: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class Worker(Base):
    """What one worker can run, as it last advertised: its problems and models (each with its source and options)
    and its Ray cluster's CPUs and GPUs. ``seen_at`` is its last advertisement; older than the liveness window,
    it no longer counts."""

    __tablename__ = "workers"
    __table_args__ = (Index("ix_workers_seen", "seen_at"),)

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    cpus: Mapped[float] = mapped_column(Float)
    gpus: Mapped[float] = mapped_column(Float)
    problems: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    models: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    started_at: Mapped[datetime]
    seen_at: Mapped[datetime]
