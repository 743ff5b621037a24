"""The FastAPI application: ``create_app(settings)``; ``flatmtl serve`` runs it under uvicorn.

At start it migrates the database (Alembic) unless told not to, so a fresh machine needs no setup.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from flatmtl.api import errors
from flatmtl.api.limits import BodySizeLimit
from flatmtl.api.observe import RequestTimer
from flatmtl.api.routes import code, jobs, meta
from flatmtl.api.routes.code import CODE_PATH
from flatmtl.service.db import Database
from flatmtl.service.settings import Settings, load_settings
from flatmtl.service.telemetry.collector import TELEMETRY
from flatmtl.service.telemetry.snapshot import database_source
from flatmtl.service.tokens import TokenCache


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = Database.from_settings(settings)
        if settings.migrate_on_start:
            await run_in_threadpool(database.migrate)
        settings.artifacts.mkdir(parents=True, exist_ok=True)
        TELEMETRY.set_source(database_source(database, settings.lease_seconds))
        app.state.db = database
        app.state.tokens = TokenCache(database, settings.token_key())
        # What start-up built (FastAPI, pydantic, SQLAlchemy) lives as long as the process: frozen, it drops
        # out of the collector's full passes, which otherwise cost tens of ms and set the latency's tail.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            database.dispose()

    app = FastAPI(
        title="FlatMTL",
        version="1",
        summary="Multi-task learning jobs and sweeps: submit, watch, fetch results.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    errors.install(app)
    # an archive up to twice the limit reaches the route, which refuses it naming the field
    code_body = max(settings.max_body_bytes, 2 * settings.code_max_bytes)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, per_path={CODE_PATH: code_body})
    app.add_middleware(RequestTimer)
    app.include_router(jobs.router)
    app.include_router(meta.router)
    app.include_router(code.router)
    return app
