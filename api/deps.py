"""Request dependencies: settings, database and the caller's identity (API tokens with scopes).

They are ``async``: FastAPI runs a sync dependency in the thread pool, and each hop to it cost more than
the dependency itself. Only a token not verified in the last seconds is looked up in a thread.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from flatmtl.api.errors import ApiError
from flatmtl.service.db import Database
from flatmtl.service.settings import Settings
from flatmtl.service.tokens import Principal, TokenCache

bearer = HTTPBearer(auto_error=False, description="An API token from `flatmtl token create`.")
ANONYMOUS = Principal("anonymous", frozenset({"read", "read_all"}))
"""With ``reads_open`` the operator opened every read to everyone: anonymous callers read all users' jobs."""
CHALLENGE = {"WWW-Authenticate": "Bearer"}


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_db(request: Request) -> Database:
    return request.app.state.db


async def get_tokens(request: Request) -> TokenCache:
    return request.app.state.tokens


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_db)]
TokensDep = Annotated[TokenCache, Depends(get_tokens)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def require(scope: str) -> object:
    """A dependency yielding the caller, refusing 401 without a valid token and 403 without ``scope``.

    Reads (scope ``read``) are open to anonymous callers when the ``reads_open`` setting is on.
    """

    async def dependency(credentials: Credentials, settings: SettingsDep, tokens: TokensDep) -> Principal:
        if credentials is None:
            if scope == "read" and settings.reads_open:
                return ANONYMOUS
            raise ApiError(401, "missing bearer token; create one with `flatmtl token create`", CHALLENGE)
        principal = tokens.cached(credentials.credentials)
        if principal is None:
            principal = await run_in_threadpool(tokens.verify, credentials.credentials)
        if principal is None:
            raise ApiError(401, "unknown or revoked token", CHALLENGE)
        if not principal.can(scope):
            raise ApiError(403, f"the token of {principal.user!r} lacks the {scope!r} scope")
        return principal

    return Depends(dependency)


async def optional_principal(credentials: Credentials, tokens: TokensDep) -> Principal | None:
    """The caller when a bearer token is given (401 if it is not valid), else None."""
    if credentials is None:
        return None
    principal = tokens.cached(credentials.credentials) or await run_in_threadpool(
        tokens.verify, credentials.credentials
    )
    if principal is None:
        raise ApiError(401, "unknown or revoked token", CHALLENGE)
    return principal


Reader = Annotated[Principal, require("read")]
MaybeCaller = Annotated[Principal | None, Depends(optional_principal)]
Submitter = Annotated[Principal, require("submit")]
CodeShipper = Annotated[Principal, require("code")]
