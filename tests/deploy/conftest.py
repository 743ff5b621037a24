from tests.service.databases import database_url, db, postgres_migrated, sqlite_template

__all__ = ["database_url", "db", "postgres_migrated", "sqlite_template"]
