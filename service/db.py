"""Engines, sessions and migrations for SQLite (embedded default) and PostgreSQL.

SQLite gets WAL, a busy timeout and foreign keys on every connection, and SQLAlchemy's own BEGIN
(pysqlite's implicit transactions are turned off) so write transactions can start with
BEGIN IMMEDIATE: they take the write lock up front instead of failing to upgrade a read lock.
Threads of one process also take a lock around SQLite writes, which is much faster than the busy
handler's sleep-and-retry when many threads of a worker or the API write at once.

PostgreSQL connections are pinged when taken from the pool and replaced every few minutes: after a
server restart, the first request on an idle pooled connection would otherwise fail, and a server that
is down is reported in seconds (the connect timeout), not after the operating system's TCP timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from flatmtl.service.settings import Settings

ALEMBIC_INI = Path(__file__).resolve().parent / "alembic.ini"
CONNECT_TIMEOUT_S = 5
POOL_RECYCLE_S = 300
POOL_TIMEOUT_S = 10.0


class Database:
    """One engine, a reader session factory and a writer one (BEGIN IMMEDIATE on SQLite)."""

    def __init__(self, url: str, *, busy_timeout_s: float = 30.0, echo: bool = False) -> None:
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self.engine = _create_engine(url, busy_timeout_s, echo)
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        self._immediate = self.engine.execution_options(flatmtl_begin="IMMEDIATE")
        self._writer = sessionmaker(self._immediate, expire_on_commit=False)
        # SQLite has one writer at a time: threads of this process queue on a lock instead of
        # polling the busy handler; other processes still wait through busy_timeout.
        self._write_lock = threading.Lock() if self.is_sqlite else None

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(settings.db_url, busy_timeout_s=settings.sqlite_busy_timeout_s)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reads; rolled back at the end."""
        with self._reader() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction, committed on success (before the caller answers anyone)."""
        with self._write_lock or nullcontext(), self._writer() as session, session.begin():
            yield session

    @contextmanager
    def write_connection(self) -> Iterator[Connection]:
        """A Core write transaction: the queue's hot paths skip the ORM's unit of work."""
        with self._write_lock or nullcontext(), self._immediate.begin() as connection:
            yield connection

    def migrate(self) -> None:
        migrate(self.engine)

    def at_head(self) -> bool:
        """Whether the schema is at the newest migration (readiness)."""
        with self.engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_heads()
        return set(current) == set(ScriptDirectory.from_config(_alembic_config()).get_heads())

    def dispose(self) -> None:
        self.engine.dispose()


def _create_engine(url: str, busy_timeout_s: float, echo: bool) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(
            url,
            echo=echo,
            pool_size=10,
            max_overflow=20,
            pool_pre_ping=True,
            pool_recycle=POOL_RECYCLE_S,
            pool_timeout=POOL_TIMEOUT_S,
            connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
        )
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    # LIFO: the connection used last has the warmest page cache (SQLite drops a connection's cache when another
    # connection wrote since its last transaction).
    engine = create_engine(
        url,
        echo=echo,
        pool_use_lifo=True,
        connect_args={"timeout": busy_timeout_s, "check_same_thread": False, "isolation_level": None},
    )
    timeout_ms = int(busy_timeout_s * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={timeout_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get("flatmtl_begin", "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _alembic_config() -> Config:
    return Config(str(ALEMBIC_INI))


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` with Alembic (at start and in tests alike)."""
    config = _alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
