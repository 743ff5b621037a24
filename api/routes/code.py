"""``POST /v1/code``: upload a tar.gz of a job's own code, stored by its digest for specs to name."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from flatmtl.api.deps import CodeShipper, SettingsDep
from flatmtl.api.errors import responses
from flatmtl.api.schemas import CodeOut
from flatmtl.service import code
from flatmtl.service.errors import InvalidInputError
from flatmtl.service.validation import FieldProblem

CODE_PATH = "/v1/code"
router = APIRouter(tags=["code"])


@router.post(
    CODE_PATH,
    response_model=CodeOut,
    status_code=201,
    summary="Upload code (a tar.gz) for jobs to run; needs the code scope",
    responses=responses(401, 403),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def upload_code(request: Request, _principal: CodeShipper, settings: SettingsDep) -> CodeOut:
    """The body is the archive. Its members must be files and directories inside its root, and it may not exceed
    the ``code_max_bytes`` setting packed or unpacked. The code runs on the workers with their rights."""
    data = await request.body()
    try:
        digest = await run_in_threadpool(code.store, settings.artifacts, data, settings.code_max_bytes)
    except code.CodeArchiveError as error:
        allowed = f"a tar.gz of files and directories under its root, at most {settings.code_max_bytes} bytes"
        raise InvalidInputError([FieldProblem("archive", f"{len(data)} bytes", str(error), allowed)]) from None
    return CodeOut(digest=digest, size=len(data))
