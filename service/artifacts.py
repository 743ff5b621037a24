"""Where a job's files live, and safe access to them.

Layout under the artifact directory: ``jobs/<id>/`` holds everything a job writes (checkpoints,
reports, plots); ``jobs/<id>/job.log`` is its log, appended by every attempt. Paths from clients are
resolved inside the job's directory and refused if they would leave it (``..``, absolute paths,
symlinks pointing out).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from flatmtl.service.errors import NotFoundError

LOG_NAME = "job.log"
MAX_PATH_CHARS = 1024


@dataclass(frozen=True)
class ArtifactInfo:
    path: str
    size: int
    modified: float


def job_dir(artifact_root: Path, job_id: int) -> Path:
    return artifact_root / "jobs" / str(job_id)


def log_path(artifact_root: Path, job_id: int) -> Path:
    return job_dir(artifact_root, job_id) / LOG_NAME


def list_artifacts(artifact_root: Path, job_id: int) -> list[ArtifactInfo]:
    """Every regular file of the job, relative paths sorted; symlinks are not followed."""
    root = job_dir(artifact_root, job_id)
    if not root.is_dir():
        return []
    found = []
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            if path.is_symlink() or not path.is_file():
                continue
            stat = path.stat()
            found.append(ArtifactInfo(path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime))
    return sorted(found, key=lambda a: a.path)


def resolve_artifact(artifact_root: Path, job_id: int, relative: str) -> Path:
    """The file ``relative`` inside the job's directory; NotFoundError for anything outside or missing."""
    missing = NotFoundError(f"job {job_id} has no artifact {relative[:200]!r}")
    if "\x00" in relative or len(relative) > MAX_PATH_CHARS or relative.startswith(("/", "\\")):
        raise missing
    root = job_dir(artifact_root, job_id).resolve()
    try:
        candidate = (root / relative).resolve()
        found = candidate.is_relative_to(root) and candidate.is_file()
    except (OSError, ValueError):  # a name too long for the filesystem, say
        found = False
    if not found:
        raise missing
    return candidate


def tail_log(artifact_root: Path, job_id: int, *, lines: int, offset: int | None = None) -> tuple[list[str], int]:
    """The last ``lines`` lines, or everything after byte ``offset`` (for following); and the next offset."""
    path = log_path(artifact_root, job_id)
    if not path.is_file():
        return [], 0
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        if offset is not None:
            start = min(max(offset, 0), size)
            handle.seek(start)
            chunk = handle.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            return complete.decode(errors="replace").splitlines(), start + len(complete)
        block, data = 65536, b""
        position = size
        while position > 0 and data.count(b"\n") <= lines:
            step = min(block, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
    text = data.decode(errors="replace").splitlines()
    return text[-lines:] if lines > 0 else [], size
