"""An API on a migrated database (SQLite and PostgreSQL), users with tokens, and the test catalog."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import flatmtl.service.specs.base
from flatmtl.api.app import create_app
from flatmtl.service.db import Database
from flatmtl.service.settings import Settings
from flatmtl.service.tokens import create_token
from tests.service.catalogs import CATALOG
from tests.service.databases import database_url, postgres_migrated, sqlite_template

__all__ = ["database_url", "postgres_migrated", "sqlite_template"]


@dataclass
class Api:
    client: TestClient
    db: Database
    settings: Settings
    tokens: dict[str, str]

    def as_user(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}


@pytest.fixture(autouse=True)
def test_catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    """Specs validate against the hand-written catalog (which has F-MTL and SAMO with rho and alpha)."""
    monkeypatch.setattr(flatmtl.service.specs.base, "load_catalog", lambda: CATALOG)


def make_api(database_url: str, tmp_path: Path, **overrides: object) -> Iterator[Api]:
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        token_secret="test-secret",
        max_body_bytes=65536,
        **overrides,  # type: ignore[arg-type]
    )
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        db: Database = app.state.db
        key = settings.token_key()
        tokens = {
            "alice": create_token(db, key, "alice", ["submit"]),
            "bob": create_token(db, key, "bob", ["submit"]),
            "reader": create_token(db, key, "reader", ["read"]),
            "auditor": create_token(db, key, "auditor", ["read_all"]),
            "root": create_token(db, key, "root", ["admin"]),
        }
        yield Api(client, db, settings, tokens)


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Iterator[Api]:
    yield from make_api(database_url, tmp_path)
