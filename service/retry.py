"""Riding out a database that is briefly (or for long) unreachable: which errors pass, and backoff.

A transient error is one a later attempt can get past without anyone changing anything: the server
restarting or unreachable, a connection it dropped, a full connection pool, SQLite's write lock held
too long. Errors in the statement itself (a missing table, a constraint) are not retried.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import exc

T = TypeVar("T")

SQLITE_TRANSIENT = ("locked", "busy", "unable to open", "disk i/o")


class GaveUpError(Exception):
    """The caller stopped the retries (``give_up`` answered true) while the database stayed unreachable."""


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` says the database is unreachable or busy rather than that the statement is wrong."""
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, exc.DisconnectionError | exc.TimeoutError):
        return True
    if isinstance(error, exc.OperationalError | exc.InterfaceError):
        if isinstance(error.orig, sqlite3.Error):
            return any(marker in str(error.orig).lower() for marker in SQLITE_TRANSIENT)
        return True
    return False


def describe(error: BaseException) -> str:
    """One line for logs and job errors: the driver's exception and its first line."""
    cause = getattr(error, "orig", None) or error
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{type(cause).__name__}: {first}" if first else type(cause).__name__


class Backoff:
    """Exponential delays with full jitter, ``first_s`` doubling up to ``cap_s``."""

    def __init__(self, first_s: float = 0.2, cap_s: float = 10.0) -> None:
        self.first_s, self.cap_s, self.failures = first_s, cap_s, 0

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.first_s * 2**self.failures)
        self.failures += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.failures = 0


def retrying(
    call: Callable[[], T],
    *,
    what: str,
    log: logging.Logger,
    give_up: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], object] = time.sleep,
    backoff: Backoff | None = None,
) -> T:
    """``call()``, repeated with backoff for as long as it fails transiently and ``give_up()`` is false.

    ``sleep`` may return early (an Event's ``wait``); ``give_up`` is asked again before every attempt.
    Raises GaveUpError from the last transient error once ``give_up()`` is true; other errors propagate.
    """
    backoff = backoff or Backoff()
    while True:
        try:
            return call()
        except Exception as error:
            if not is_transient(error):
                raise
            if give_up():
                raise GaveUpError(f"{what}: the database stayed unreachable ({describe(error)})") from error
            delay = backoff.next_delay()
            log.warning(
                "%s: database unavailable (%s); retry %d in %.1f s", what, describe(error), backoff.failures, delay
            )
            sleep(delay)
