"""``/v1/methods`` (the catalog, for clients that build forms), ``/v1/problems`` (what live workers can run) and
the health probes."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool

from flatmtl.api.deps import CHALLENGE, DatabaseDep, MaybeCaller, Reader, SettingsDep
from flatmtl.api.errors import ApiError, responses
from flatmtl.api.schemas import Health, MethodList, MethodOut, RunnableList
from flatmtl.service import capabilities
from flatmtl.service.catalog import load_catalog
from flatmtl.service.telemetry.collector import CONTENT_TYPE_LATEST, TELEMETRY

router = APIRouter()


@router.get(
    "/v1/methods",
    response_model=MethodList,
    tags=["methods"],
    summary="Every method with its hyper-parameter schema",
    responses=responses(401, 403),
)
async def list_methods(
    _principal: Reader, kind: Annotated[Literal["weighting", "aggregator", "wrapper"] | None, Query()] = None
) -> MethodList:
    return MethodList(methods=[MethodOut.model_validate(m.raw) for m in load_catalog().methods(kind)])


@router.get(
    "/v1/problems",
    response_model=RunnableList,
    tags=["methods"],
    summary="The problems and models live workers can run, with their source, options and workers",
    responses=responses(401, 403),
)
def list_problems(_principal: Reader, db: DatabaseDep, settings: SettingsDep) -> RunnableList:
    return RunnableList.model_validate(capabilities.catalog(db, settings.lease_seconds))


@router.get("/healthz", response_model=Health, tags=["health"], summary="The process is up", responses=responses())
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    tags=["health"],
    summary="The database is reachable and migrated",
    responses=responses(503),
)
async def readyz(db: DatabaseDep) -> Health:
    try:
        ready = await run_in_threadpool(db.at_head)
    except Exception as error:
        raise ApiError(503, f"database unreachable: {type(error).__name__}") from error
    if not ready:
        raise ApiError(503, "database schema is not at the newest migration")
    return Health(status="ok")


@router.get(
    "/metrics",
    response_class=Response,
    tags=["health"],
    summary="Prometheus metrics: control plane and running jobs (no token, for the scraper)",
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."}} | responses(401),
    openapi_extra={"security": [{}, {"HTTPBearer": []}]},  # the token is optional (the empty requirement)
)
async def metrics(caller: MaybeCaller, settings: SettingsDep) -> Response:
    """Without a token (when ``metrics_open``): everything, for the scraper. With one: the training series of the
    token's user's jobs only, unless it reads all."""
    if caller is None and not settings.metrics_open:
        raise ApiError(401, "/metrics needs a bearer token on this server", CHALLENGE)
    owner = None if caller is None else caller.reads_as
    body = await run_in_threadpool(TELEMETRY.render, owner)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
