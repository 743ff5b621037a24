"""One error body for every failure, declared in the OpenAPI document, with no stack traces.

422 lists each problem with its field path, the value given and what is allowed; 401/403/404/409/413
say why in ``message``. A database that cannot be reached (down, restarting, out of connections) is a
503 with ``Retry-After``, not a 500.

Unexpected errors are answered by :class:`CatchAll`, inside the middleware stack, rather than by an
``Exception`` handler: Starlette re-raises after such a handler, and uvicorn then closes the keep-alive
connection, so the client's next request on it would be reset.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from flatmtl.api.middleware import HttpMiddleware
from flatmtl.service.errors import (
    ConflictError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    ServiceError,
    UnrunnableError,
)
from flatmtl.service.retry import describe, is_transient
from flatmtl.service.specs.base import MAX_DEPTH
from flatmtl.service.validation import json_safe, problems_from

log = logging.getLogger("flatmtl.api")
RETRY_AFTER_S = 2

STATUS_CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    422: "invalid",
    500: "internal",
    503: "unavailable",
}
DESCRIPTIONS = {
    401: "No token, or an unknown or revoked token.",
    403: "The token lacks the scope, or the job belongs to another user.",
    404: "No such job or artifact.",
    409: "The job's state (or an earlier request with the same idempotency key) forbids this.",
    413: "The request body exceeds the server's limit.",
    422: "Invalid input: each error names the field, the value and what is allowed.",
    500: "Internal error (details are in the server log, never in the response).",
    503: "Not ready: the database is unreachable or not migrated.",
}


class FieldErrorBody(BaseModel):
    field: str = Field(description="Dotted path of the offending field, e.g. spec.method.wrapper.hparams.rho.")
    value: Any = Field(None, description="The value given.")
    message: str
    allowed: str = Field("", description="What the field accepts.")


class ErrorBody(BaseModel):
    code: str = Field(description="Machine-readable: unauthorized, forbidden, not_found, conflict, invalid, ...")
    message: str
    errors: list[FieldErrorBody] = Field(default_factory=list)


class ApiError(Exception):
    """Raised by routes and dependencies; rendered as ErrorBody with ``status``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI declarations of the given error statuses (413, 422, 500 and 503 are added everywhere)."""
    everywhere = {413, 422, 500, 503}
    return {code: {"model": ErrorBody, "description": DESCRIPTIONS[code]} for code in sorted({*codes, *everywhere})}


def error_response(status: int, message: str, errors: list[FieldErrorBody] | None = None, **kw: Any) -> JSONResponse:
    body = ErrorBody(code=STATUS_CODES.get(status, "error"), message=message, errors=errors or [])
    return JSONResponse(body.model_dump(mode="json"), status_code=status, **kw)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every exception into an ErrorBody."""

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, headers=exc.headers)

    @app.exception_handler(InvalidInputError)
    async def _invalid_input(_request: Request, exc: InvalidInputError) -> JSONResponse:
        found = [
            FieldErrorBody(field=p.field, value=json_safe(p.value), message=p.message, allowed=p.allowed)
            for p in exc.problems
        ]
        return error_response(422, exc.message, found)

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        if isinstance(exc, UnrunnableError):
            problem = FieldErrorBody(field=exc.field, value=exc.value, message=exc.message, allowed=exc.allowed)
            return error_response(422, f"invalid request: {exc.message}", [problem])
        status = {NotFoundError: 404, ConflictError: 409, ForbiddenError: 403}.get(type(exc), 409)
        return error_response(status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        found = [
            FieldErrorBody(field=p.field, value=p.value, message=p.message, allowed=p.allowed)
            for p in problems_from(_without_body(exc.errors()))
        ]
        summary = "; ".join(f"{e.field or '(body)'}: {e.message}" for e in found[:3])
        return error_response(422, f"invalid request: {summary}", found)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's only 400: a body it could not decode (not UTF-8, say). That is invalid input, like bad JSON.
            if isinstance(exc.__cause__, RecursionError):
                message = f"unreadable body: nested deeper than {MAX_DEPTH} levels"
                allowed = f"a JSON document at most {MAX_DEPTH} levels deep"
            else:
                message, allowed = f"unreadable body: {exc.detail}", "a JSON document"
            problem = FieldErrorBody(field="", message=message, allowed=allowed)
            return error_response(422, f"invalid request: (body): {problem.message}", [problem])
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(SQLAlchemyError)
    async def _database(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        return unexpected(request.method, request.url.path, exc)

    app.add_middleware(CatchAll)


def unavailable(error: BaseException) -> JSONResponse:
    return error_response(
        503,
        f"the database is unreachable ({describe(error)}); retry later",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def unexpected(method: str, path: str, error: BaseException) -> JSONResponse:
    """503 for a database that cannot be reached, else 500 (logged, never detailed to the client)."""
    if is_transient(error):
        log.warning("%s %s: database unavailable: %s", method, path, describe(error))
        return unavailable(error)
    log.error("unhandled error on %s %s", method, path, exc_info=error)
    return error_response(500, "internal error; the server log has the details")


class CatchAll(HttpMiddleware):
    """ASGI middleware: turns an exception no handler took into a 500 (or 503) and keeps the connection open."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as error:
            if started:  # too late for an error body: the server has to drop the connection
                raise
            await unexpected(scope["method"], scope["path"], error)(scope, receive, send)


def _without_body(errors: Any) -> list[dict[str, Any]]:
    """FastAPI prefixes body errors with "body"; clients wrote the body, so paths start inside it."""
    cleaned = []
    for item in errors:
        loc = tuple(item.get("loc", ()))
        if loc[:1] == ("body",):
            loc = () if item.get("type") == "json_invalid" else loc[1:]
        cleaned.append({**item, "loc": loc, "input": json_safe(item.get("input"))})
    return cleaned
