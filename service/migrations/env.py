"""Alembic environment: uses the caller's connection (flatmtl.service.db.migrate) or the settings' URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from flatmtl.service.models import Base


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    from flatmtl.service.db import Database
    from flatmtl.service.settings import load_settings

    database = Database.from_settings(load_settings())
    with database.engine.begin() as own:
        run(own)
    database.dispose()


main()
