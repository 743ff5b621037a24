"""Database fixtures shared by the service and API tests: the same tests run on SQLite and PostgreSQL.

PostgreSQL comes from FLATMTL_TEST_POSTGRES_URL (``eval "$(scripts/start_postgres.sh)"``). Without it
the PostgreSQL cases skip locally and fail under CI (the CI variable is set), so CI cannot go green
without having tested PostgreSQL.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from flatmtl.service.db import Database

POSTGRES_ENV = "FLATMTL_TEST_POSTGRES_URL"
TABLES = ("metrics", "trials", "events", "api_tokens", "jobs", "workers")


def postgres_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if url:
        return url
    message = f'{POSTGRES_ENV} is not set; start one with: eval "$(scripts/start_postgres.sh)"'
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL tests must run under CI: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (migrating once keeps the suite fast)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    database = Database(f"sqlite:///{path}")
    database.migrate()
    database.dispose()
    return path


@pytest.fixture(scope="session")
def postgres_migrated() -> str:
    url = postgres_url()
    database = Database(url)
    with database.engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    database.migrate()
    database.dispose()
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A freshly migrated, empty database of each kind."""
    if request.param == "sqlite":
        path = tmp_path / "flatmtl.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_migrated")
    database = Database(url)
    with database.engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    database.dispose()
    return url


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url, busy_timeout_s=30.0)
    yield database
    database.dispose()
