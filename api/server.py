"""The API's process model: uvicorn with one process, or several sharing the port.

One process uses one core; more processes use more cores.
They are safe on both databases (SQLite: WAL and a busy timeout between processes). The database is
migrated once, here, before the workers start; each worker rebuilds the same settings from the
environment. Prometheus's request histograms are then per process: a scrape sees the process that
answered it (the job and queue gauges read the database and are complete).

The processes share a listening socket made here with ``IPPROTO_TCP``: uvicorn's own (proto 0) makes asyncio
skip TCP_NODELAY on accepted connections, and every keep-alive request past the first then waits ~40 ms
for a delayed ACK (uvicorn issue #3149).
"""

from __future__ import annotations

import json
import os
import socket

import uvicorn
from fastapi import FastAPI
from uvicorn.supervisors import Multiprocess

from flatmtl.api.app import create_app
from flatmtl.service.db import Database
from flatmtl.service.settings import Settings, load_settings

PREFIX = "FLATMTL_"


def environment(settings: Settings) -> dict[str, str]:
    """``FLATMTL_*`` variables from which :func:`load_settings` rebuilds ``settings`` (None fields left out)."""
    found = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if isinstance(value, list):  # pydantic-settings reads lists from JSON
            found[PREFIX + name.upper()] = json.dumps([str(item) for item in value])
            continue
        found[PREFIX + name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    return found


def app_from_environment() -> FastAPI:
    """The application of one worker process (uvicorn's factory)."""
    return create_app(load_settings())


def serve(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    workers: int = 1,
    access_log: bool = True,
) -> None:
    """Run the API until interrupted; ``workers`` processes (1: the app runs in this process)."""
    if workers < 1:
        raise ValueError(f"workers {workers} not allowed; allowed: >= 1")
    host, port = host or settings.api_host, port or settings.api_port
    if workers == 1:
        uvicorn.run(create_app(settings), host=host, port=port, access_log=access_log)
        return
    if settings.migrate_on_start:
        database = Database.from_settings(settings)
        try:
            database.migrate()
        finally:
            database.dispose()
    settings.token_key()  # created once here, not raced by the workers
    os.environ.update(environment(settings.model_copy(update={"migrate_on_start": False})))
    config = uvicorn.Config(
        "flatmtl.api.server:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=access_log,
    )
    Multiprocess(config, sockets=[listener(host, port)]).run()


def listener(host: str, port: int) -> socket.socket:
    """A bound TCP socket the worker processes inherit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock
