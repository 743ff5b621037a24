"""One error body for every failure, declared in the OpenAPI document, with no stack traces.

422 lists each problem with its field path, the value given and what is allowed; 401/403/404/409/413
say why in ``message``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from flatmtl.service.errors import ConflictError, ForbiddenError, NotFoundError, ServiceError
from flatmtl.service.validation import json_safe, problems_from

log = logging.getLogger("flatmtl.api")

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
    """OpenAPI declarations of the given error statuses (413, 422 and 500 are added everywhere)."""
    return {code: {"model": ErrorBody, "description": DESCRIPTIONS[code]} for code in sorted({*codes, 413, 422, 500})}


def error_response(status: int, message: str, errors: list[FieldErrorBody] | None = None, **kw: Any) -> JSONResponse:
    body = ErrorBody(code=STATUS_CODES.get(status, "error"), message=message, errors=errors or [])
    return JSONResponse(body.model_dump(mode="json"), status_code=status, **kw)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every exception into an ErrorBody."""

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, headers=exc.headers)

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
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
            problem = FieldErrorBody(field="", message=f"unreadable body: {exc.detail}", allowed="a JSON document")
            return error_response(422, f"invalid request: (body): {problem.message}", [problem])
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal error; the server log has the details")


def _without_body(errors: Any) -> list[dict[str, Any]]:
    """FastAPI prefixes body errors with "body"; clients wrote the body, so paths start inside it."""
    cleaned = []
    for item in errors:
        loc = tuple(item.get("loc", ()))
        if loc[:1] == ("body",):
            loc = () if item.get("type") == "json_invalid" else loc[1:]
        cleaned.append({**item, "loc": loc, "input": json_safe(item.get("input"))})
    return cleaned
