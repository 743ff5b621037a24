"""``/v1/jobs``: submit, list, get, cancel, retry, and each job's events, metrics, trials, logs, artifacts."""

from __future__ import annotations

from itertools import groupby
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Path, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from flatmtl.api.deps import DatabaseDep, Reader, SettingsDep, Submitter
from flatmtl.api.errors import ApiError, responses
from flatmtl.api.schemas import (
    ArtifactList,
    ArtifactOut,
    EventList,
    EventOut,
    JobOut,
    JobPage,
    JobState,
    LogTail,
    MetricHistory,
    MetricSeries,
    TrialList,
    TrialOut,
)
from flatmtl.service import artifacts, capabilities, data_roots, jobs, queue
from flatmtl.service.db import Database
from flatmtl.service.errors import InvalidInputError
from flatmtl.service.models import Job
from flatmtl.service.specs.submission import JobSubmission
from flatmtl.service.tokens import Principal
from flatmtl.service.validation import FieldProblem

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
JobId = Annotated[int, Path(ge=1, le=2**62, description="The job's id.")]
NO_NUL = r"^[^\x00]*$"
"""Text parameters: PostgreSQL cannot store or compare a NUL character."""
ArtifactPath = Annotated[
    str,
    Path(
        max_length=artifacts.MAX_PATH_CHARS,
        pattern=NO_NUL,
        description="Relative to the job's directory, as the artifact list gives it.",
    ),
]
IdempotencyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        pattern=NO_NUL,
        description="Like the body's idempotency_key (both given must be equal).",
    ),
]
READ_ERRORS = responses(401, 403, 404)
"""Reads are scoped to the token's user (``read_all`` and ``admin`` read everyone's): another user's job is 404."""
WRITE_ERRORS = responses(401, 403, 404, 409)


def _out(job: Job) -> JobOut:
    return JobOut.model_validate(job)


def _owned(db: Database, job_id: int, principal: Principal) -> None:
    """Non-admins act only on their own jobs."""
    with db.read() as session:
        owner = jobs.get_job(session, job_id).created_by
    if owner != principal.user and not principal.can("admin"):
        raise ApiError(403, f"job {job_id} belongs to {owner!r}; only its owner or an admin may change it")


def _idempotency_key(body: str | None, header: str | None) -> str | None:
    if header is not None and body is not None and header != body:
        problem = FieldProblem(
            "Idempotency-Key", header, "differs from the body's idempotency_key", f"the same key as the body, {body!r}"
        )
        raise InvalidInputError([problem])
    return header if header is not None else body


@router.post(
    "",
    status_code=201,
    response_model=JobOut,
    summary="Submit a training job or a sweep",
    responses={200: {"model": JobOut, "description": "A repeat of an idempotency key: the existing job."}}
    | responses(401, 403, 409),
)
async def submit_job(
    submission: JobSubmission,
    principal: Submitter,
    db: DatabaseDep,
    settings: SettingsDep,
    response: Response,
    idempotency_header: IdempotencyHeader = None,
) -> JobOut:
    """Queue a job; it is committed before the answer. 201 when created, 200 for a repeated idempotency key
    (the ``Idempotency-Key`` header or the body's ``idempotency_key``; both given must agree). Paths in the spec
    must lie inside the server's data roots. A problem or model that no live worker advertises is refused (422)
    naming the ones they run."""
    key = _idempotency_key(submission.idempotency_key, idempotency_header)
    document = submission.spec.model_dump(mode="json")
    if document.get("base", document).get("code") and not principal.can("code"):
        raise ApiError(403, f"the token of {principal.user!r} lacks the 'code' scope that running shipped code needs")
    outside = data_roots.confine(document, settings.allowed_data)
    if outside:
        raise InvalidInputError(outside)
    await run_in_threadpool(capabilities.check_runnable_somewhere, db, document, settings.lease_seconds)
    job, created = await run_in_threadpool(
        queue.submit,
        db,
        submission.spec,
        priority=submission.priority,
        max_attempts=submission.max_attempts or settings.max_attempts,
        idempotency_key=key,
        user=principal.user,
    )
    if not created:
        response.status_code = 200
    return _out(job)


@router.get("", response_model=JobPage, summary="List jobs, newest first", responses=responses(401, 403))
def list_jobs(
    principal: Reader,
    db: DatabaseDep,
    state: Annotated[list[JobState] | None, Query(description="Repeatable.")] = None,
    kind: Annotated[list[Literal["train", "sweep"]] | None, Query(description="Repeatable.")] = None,
    name: Annotated[str | None, Query(max_length=200, pattern=NO_NUL)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[int | None, Query(ge=1, le=2**62, description="next_cursor of the previous page.")] = None,
) -> JobPage:
    with db.read() as session:
        page, next_cursor = jobs.list_jobs(
            session,
            states=state or (),
            kinds=kind or (),
            name=name,
            before=cursor,
            limit=limit,
            owner=principal.reads_as,
        )
        return JobPage(items=[_out(job) for job in page], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobOut, summary="Get a job", responses=READ_ERRORS)
def get_job(job_id: JobId, principal: Reader, db: DatabaseDep) -> JobOut:
    with db.read() as session:
        return _out(jobs.get_job(session, job_id, owner=principal.reads_as))


@router.post(
    "/{job_id}/cancel", response_model=JobOut, summary="Cancel a queued or running job", responses=WRITE_ERRORS
)
def cancel_job(job_id: JobId, principal: Submitter, db: DatabaseDep) -> JobOut:
    """A running job's worker sees the cancellation at its next heartbeat and stops its Ray work."""
    _owned(db, job_id, principal)
    return _out(queue.cancel(db, job_id, user=principal.user))


@router.post(
    "/{job_id}/retry", response_model=JobOut, summary="Queue a failed or cancelled job again", responses=WRITE_ERRORS
)
def retry_job(job_id: JobId, principal: Submitter, db: DatabaseDep) -> JobOut:
    _owned(db, job_id, principal)
    return _out(queue.retry(db, job_id, user=principal.user))


@router.get("/{job_id}/events", response_model=EventList, summary="A job's audit trail", responses=READ_ERRORS)
def job_events(job_id: JobId, principal: Reader, db: DatabaseDep) -> EventList:
    with db.read() as session:
        events = jobs.list_events(session, job_id, owner=principal.reads_as)
        return EventList(items=[EventOut.model_validate(e) for e in events])


@router.get("/{job_id}/metrics", response_model=MetricHistory, summary="Metric history", responses=READ_ERRORS)
def job_metrics(
    job_id: JobId,
    principal: Reader,
    db: DatabaseDep,
    name: Annotated[
        list[Annotated[str, Query(max_length=200, pattern=NO_NUL)]] | None,
        Query(max_length=100, description="Only these metrics (repeatable)."),
    ] = None,
    trial: Annotated[int | None, Query(ge=0, le=1_000_000, description="Only this trial of a sweep.")] = None,
    max_points: Annotated[
        int | None, Query(ge=2, le=100_000, description="Downsample each series to this many evenly spaced points.")
    ] = None,
) -> MetricHistory:
    with db.read() as session:
        points = jobs.metric_history(
            session, job_id, names=name or (), trial_index=trial, max_points=max_points, owner=principal.reads_as
        )
    series = []
    for (metric, trial_index), group in groupby(points, key=lambda p: (p.name, p.trial_index)):
        items = list(group)
        series.append(
            MetricSeries(
                name=metric,
                trial_index=trial_index,
                steps=[p.step for p in items],
                values=[p.value for p in items],
            )
        )
    return MetricHistory(series=series)


@router.get("/{job_id}/trials", response_model=TrialList, summary="A sweep's trials", responses=READ_ERRORS)
def job_trials(job_id: JobId, principal: Reader, db: DatabaseDep) -> TrialList:
    with db.read() as session:
        trials = jobs.list_trials(session, job_id, owner=principal.reads_as)
        return TrialList(items=[TrialOut.model_validate(t) for t in trials])


@router.get("/{job_id}/logs", response_model=LogTail, summary="Tail of the job's log", responses=READ_ERRORS)
def job_logs(
    job_id: JobId,
    principal: Reader,
    db: DatabaseDep,
    settings: SettingsDep,
    tail: Annotated[int, Query(ge=0, le=100_000, description="How many last lines.")] = 200,
    offset: Annotated[int | None, Query(ge=0, le=2**62, description="Only lines after this byte offset.")] = None,
) -> LogTail:
    with db.read() as session:
        jobs.get_job(session, job_id, owner=principal.reads_as)
    lines, next_offset = artifacts.tail_log(settings.artifacts, job_id, lines=tail, offset=offset)
    return LogTail(lines=lines, next_offset=next_offset)


@router.get("/{job_id}/artifacts", response_model=ArtifactList, summary="A job's files", responses=READ_ERRORS)
def job_artifacts(job_id: JobId, principal: Reader, db: DatabaseDep, settings: SettingsDep) -> ArtifactList:
    with db.read() as session:
        jobs.get_job(session, job_id, owner=principal.reads_as)
    found = artifacts.list_artifacts(settings.artifacts, job_id)
    return ArtifactList(items=[ArtifactOut(path=a.path, size=a.size, modified=a.modified) for a in found])


@router.get(
    "/{job_id}/artifacts/{path:path}",
    response_class=FileResponse,
    summary="Download one of a job's files",
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The file."}} | READ_ERRORS,
)
def download_artifact(
    job_id: JobId, path: ArtifactPath, principal: Reader, db: DatabaseDep, settings: SettingsDep
) -> FileResponse:
    """Paths resolve inside the job's directory only; anything else is 404."""
    with db.read() as session:
        jobs.get_job(session, job_id, owner=principal.reads_as)
    file = artifacts.resolve_artifact(settings.artifacts, job_id, path)
    return FileResponse(file, media_type="application/octet-stream", filename=file.name)
