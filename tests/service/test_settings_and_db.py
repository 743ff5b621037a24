"""Settings sources and derived paths; SQLite connection settings; migrations equal the models."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from flatmtl.service.db import Database
from flatmtl.service.models import Base
from flatmtl.service.settings import Settings, load_settings


def test_paths_derive_from_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.db_url == f"sqlite:///{tmp_path / 'flatmtl.db'}"
    assert settings.artifacts == tmp_path / "artifacts"


def test_environment_overrides_the_file_and_arguments_override_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "flatmtl.yaml"
    config.write_text("lease_seconds: 7\nreads_open: true\nmax_body_bytes: 4096\n")
    monkeypatch.setenv("FLATMTL_LEASE_SECONDS", "11")
    settings = load_settings(config, max_body_bytes=8192)
    assert (settings.lease_seconds, settings.reads_open, settings.max_body_bytes) == (11.0, True, 8192)
    monkeypatch.setenv("FLATMTL_CONFIG", str(config))
    monkeypatch.delenv("FLATMTL_LEASE_SECONDS")
    assert load_settings().lease_seconds == 7.0


def test_the_token_key_persists_when_no_secret_is_set(tmp_path: Path) -> None:
    first = Settings(data_dir=tmp_path).token_key()
    assert Settings(data_dir=tmp_path).token_key() == first and len(first) == 64
    assert (tmp_path / "token_secret").stat().st_mode & 0o077 == 0
    assert Settings(data_dir=tmp_path, token_secret="s3cret").token_key() == b"s3cret"


def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'x.db'}", busy_timeout_s=12.5)
    with database.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 12500
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    database.dispose()


def test_migrations_produce_exactly_the_models(db: Database) -> None:
    assert db.at_head()
    with db.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata)
    if db.is_sqlite:
        # SQLite's reflection drops the DESC of ix_jobs_claim's priority column; PostgreSQL keeps it.
        diff = [d for d in diff if not (d[0] in ("add_index", "remove_index") and d[1].name == "ix_jobs_claim")]
    assert diff == []
    with db.engine.connect() as connection:
        version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    assert version == "0002"
