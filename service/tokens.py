"""Per-user API tokens with scopes. Only an HMAC of each token is stored; the token is shown once.

Scopes: ``read`` (GET endpoints, on one's own jobs), ``read_all`` (reads of every user's jobs; implies read),
``submit`` (submit, cancel and retry one's own jobs; implies read), ``code`` (upload code for jobs to run,
and submit jobs that run it: the code runs with the worker's rights; implies submit), ``admin`` (everything, on
anyone's jobs).

Tokens are 256 random bits, so a keyed SHA-256 is the right hash (a slow KDF protects low-entropy
passwords, not these) and verification is one indexed lookup. The API still caches verified tokens for a
few seconds (:class:`TokenCache`): the lookup cost more than the rest of a job submission.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import select, update

from flatmtl.service.db import Database
from flatmtl.service.errors import NotFoundError
from flatmtl.service.models import SCOPES, ApiToken, utcnow

TOKEN_PREFIX = "fmtl_"
IMPLIED: dict[str, frozenset[str]] = {
    "read": frozenset({"read"}),
    "read_all": frozenset({"read", "read_all"}),
    "submit": frozenset({"read", "submit"}),
    "code": frozenset({"read", "submit", "code"}),
    "admin": frozenset(SCOPES),
}


@dataclass(frozen=True)
class Principal:
    """Who is calling, and what they may do."""

    user: str
    scopes: frozenset[str]

    def can(self, scope: str) -> bool:
        return scope in self.scopes

    @property
    def reads_as(self) -> str | None:
        """The user whose jobs this principal may read; None for every user's (``read_all``, ``admin``)."""
        return None if self.can("read_all") else self.user


def hash_token(token: str, key: bytes) -> str:
    return hmac.new(key, token.encode(), hashlib.sha256).hexdigest()


def create_token(db: Database, key: bytes, user: str, scopes: Iterable[str]) -> str:
    """A new token for ``user`` with ``scopes``; returns the plaintext, which is not stored."""
    granted = sorted(set(scopes))
    unknown = [s for s in granted if s not in SCOPES]
    if unknown or not granted:
        raise ValueError(f"scopes {unknown or granted!r} not allowed; allowed: {', '.join(SCOPES)} (at least one)")
    if not user or len(user) > 100 or not user.isprintable():
        raise ValueError(f"user {user!r} not allowed; allowed: 1 to 100 printable characters")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with db.write() as session:
        session.add(
            ApiToken(
                user=user,
                prefix=token[: len(TOKEN_PREFIX) + 6],
                token_hash=hash_token(token, key),
                scopes=",".join(granted),
                created_at=utcnow(),
            )
        )
    return token


def authenticate(db: Database, key: bytes, token: str) -> Principal | None:
    """The token's principal, or None for an unknown or revoked token."""
    with db.read() as session:
        row = session.scalar(
            select(ApiToken).where(ApiToken.token_hash == hash_token(token, key), ApiToken.revoked_at.is_(None))
        )
    if row is None:
        return None
    scopes = frozenset(s for granted in row.scopes.split(",") for s in IMPLIED.get(granted, ()))
    return Principal(row.user, scopes)


def revoke_token(db: Database, prefix: str) -> int:
    """Revoke every live token starting with ``prefix``; how many were revoked."""
    with db.write() as session:
        result = session.execute(
            update(ApiToken)
            .where(ApiToken.prefix == prefix, ApiToken.revoked_at.is_(None))
            .values(revoked_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    if result.rowcount == 0:
        raise NotFoundError(f"no live token with prefix {prefix!r}")
    return result.rowcount


class TokenCache:
    """Principals of recently verified tokens, each trusted for ``ttl_s`` seconds after its lookup.

    Keyed by the token's HMAC, so no plaintext token is held. Only hits are cached (an attacker's
    guesses cannot fill it), and at most ``max_entries``. A revocation, made by another process,
    therefore takes effect within ``ttl_s``.
    """

    def __init__(
        self,
        db: Database,
        key: bytes,
        *,
        ttl_s: float = 5.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db, self.key, self.ttl_s, self.max_entries, self.clock = db, key, ttl_s, max_entries, clock
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def cached(self, token: str) -> Principal | None:
        """The principal if ``token`` was verified less than ``ttl_s`` ago, else None (verify it)."""
        entry = self._entries.get(hash_token(token, self.key))
        if entry is None or entry[0] <= self.clock():
            return None
        return entry[1]

    def verify(self, token: str) -> Principal | None:
        """Look ``token`` up in the database (blocking) and remember a valid one."""
        principal = authenticate(self.db, self.key, token)
        if principal is not None:
            with self._lock:
                if len(self._entries) >= self.max_entries:
                    now = self.clock()
                    self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
                    if len(self._entries) >= self.max_entries:
                        self._entries.clear()
                self._entries[hash_token(token, self.key)] = (self.clock() + self.ttl_s, principal)
        return principal
