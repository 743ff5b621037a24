"""Code shipped with a job: a directory packed as a tar.gz, stored by its SHA-256 and unpacked by the worker.

The same checks run at upload (the API refuses the archive) and at unpacking (the worker fails the job), because
an archive may reach the data directory by other means: members are regular files and directories only, with
relative paths that stay inside the root, and neither the archive nor its unpacked size exceeds the limit.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

IGNORED_DIRS = frozenset({"__pycache__", ".git", ".venv", ".mypy_cache", ".pytest_cache", ".ruff_cache"})
IGNORED_SUFFIXES = (".pyc", ".pyo")
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"


class CodeArchiveError(ValueError):
    """An archive that cannot be used: too big, unreadable, or with a member that is not a plain relative file."""


def pack(directory: Path, limit: int) -> bytes:
    """``directory`` as a gzipped tar of its files (caches and virtual environments left out), names sorted and
    times zeroed so the same files give the same digest."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as archive:
        for folder, dirs, files in os.walk(directory):
            dirs[:] = sorted(d for d in dirs if d not in IGNORED_DIRS and not (Path(folder) / d).is_symlink())
            for name in sorted(files):
                path = Path(folder) / name
                if name.endswith(IGNORED_SUFFIXES) or path.is_symlink() or not path.is_file():
                    continue
                info = archive.gettarinfo(str(path), arcname=path.relative_to(directory).as_posix())
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                with path.open("rb") as handle:
                    archive.addfile(info, handle)
                if buffer.tell() > limit:
                    raise CodeArchiveError(f"{directory} packs to more than the limit of {limit} bytes")
    data = buffer.getvalue()
    if len(data) > limit:
        raise CodeArchiveError(f"{directory} packs to {len(data)} bytes, over the limit of {limit} bytes")
    return data


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check(data: bytes, limit: int) -> list[tarfile.TarInfo]:
    """The archive's members, or CodeArchiveError naming the first one that is not allowed."""
    if len(data) > limit:
        raise CodeArchiveError(f"the archive has {len(data)} bytes, over the limit of {limit} bytes")
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            members = archive.getmembers()
    except (tarfile.TarError, OSError, EOFError) as error:
        raise CodeArchiveError(f"not a readable tar.gz archive: {error}") from None
    unpacked = 0
    for member in members:
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts or "\\" in member.name:
            raise CodeArchiveError(f"member {member.name!r} escapes the archive's root")
        if not (member.isfile() or member.isdir()):
            raise CodeArchiveError(f"member {member.name!r} is a link or special file; only files and directories")
        unpacked += member.size
        if unpacked > limit:
            raise CodeArchiveError(f"the archive unpacks to more than the limit of {limit} bytes")
    return members


def archive_path(artifact_root: Path, code_digest: str) -> Path:
    if not re.match(DIGEST_PATTERN, code_digest):
        raise CodeArchiveError(f"{code_digest!r} is not a code digest (sha256:<64 hex digits>)")
    return artifact_root / "code" / f"{code_digest.removeprefix('sha256:')}.tar.gz"


def store(artifact_root: Path, data: bytes, limit: int) -> str:
    """Check and keep the archive; its digest. Storing the same archive again is a no-op."""
    check(data, limit)
    code_digest = digest(data)
    path = archive_path(artifact_root, code_digest)
    if path.exists():
        os.utime(path)  # uploaded again: kept as long as a fresh upload
        return code_digest
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_bytes(data)
    partial.replace(path)
    return code_digest


def unpack(artifact_root: Path, code_digest: str, into: Path, limit: int) -> Path:
    """The stored archive ``code_digest`` unpacked into ``into``; CodeArchiveError if missing or not allowed."""
    path = archive_path(artifact_root, code_digest)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CodeArchiveError(
            f"no uploaded code with digest {code_digest} (never uploaded, or unused long enough to be deleted: "
            "upload it again, e.g. flatmtl submit SPEC --code DIR)"
        ) from None
    if digest(data) != code_digest:
        raise CodeArchiveError(f"the stored code {code_digest} does not match its digest")
    members = check(data, limit)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        archive.extractall(into, members=members, filter="data")
    os.utime(path)  # a run counts as a use: a retried job's code is kept as long as a fresh upload
    return into


def spec_digest(spec: Mapping[str, Any]) -> str | None:
    """The code digest a stored job spec names (a sweep names it in its base), or None."""
    train = spec.get("base", spec)
    named = train.get("code") if isinstance(train, Mapping) else None
    return named if isinstance(named, str) else None


def prune(
    artifact_root: Path, in_use: Callable[[], Collection[str]], unused_for_s: float, now: float | None = None
) -> list[str]:
    """Delete the stored archives that nobody uploaded or ran for ``unused_for_s`` seconds and that no digest
    of ``in_use()`` names (the unfinished jobs' code); their digests. ``in_use`` is asked only when some
    archive is that old, so a store of fresh archives costs a directory listing. A job retried after that fails
    naming the missing digest, and uploading the same code again brings it back."""
    folder = artifact_root / "code"
    if not folder.is_dir():
        return []
    cutoff = (time.time() if now is None else now) - unused_for_s
    stale = {}
    for path in folder.glob("*.tar.gz"):
        try:
            if path.stat().st_mtime < cutoff:
                stale["sha256:" + path.name.removesuffix(".tar.gz")] = path
        except FileNotFoundError:  # pruned by another worker
            continue
    if not stale:
        return []
    keep = set(in_use())
    removed = []
    for code_digest, path in stale.items():
        if code_digest not in keep:
            path.unlink(missing_ok=True)
            removed.append(code_digest)
    return removed
