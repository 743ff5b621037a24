"""Per-user API tokens with scopes. Only an HMAC of each token is stored; the token is shown once.

Scopes: ``read`` (GET endpoints), ``submit`` (submit, cancel and retry one's own jobs; implies read),
``admin`` (everything, on anyone's jobs).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select, update

from service.db import Database
from service.errors import NotFoundError
from service.models import SCOPES, ApiToken, utcnow

TOKEN_PREFIX = "fmtl_"
IMPLIED: dict[str, frozenset[str]] = {
    "read": frozenset({"read"}),
    "submit": frozenset({"read", "submit"}),
    "admin": frozenset(SCOPES),
}


@dataclass(frozen=True)
class Principal:
    """Who is calling, and what they may do."""

    user: str
    scopes: frozenset[str]

    def can(self, scope: str) -> bool:
        return scope in self.scopes


def hash_token(token: str, key: bytes) -> str:
    return hmac.new(key, token.encode(), hashlib.sha256).hexdigest()


def create_token(db: Database, key: bytes, user: str, scopes: Iterable[str]) -> str:
    """A new token for ``user`` with ``scopes``; returns the plaintext, which is not stored."""
    granted = sorted(set(scopes))
    unknown = [s for s in granted if s not in SCOPES]
    if unknown or not granted:
        raise ValueError(f"scopes {unknown or granted!r} not allowed; allowed: {', '.join(SCOPES)} (at least one)")
    if not user or len(user) > 100:
        raise ValueError(f"user {user!r} not allowed; allowed: 1 to 100 characters")
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
