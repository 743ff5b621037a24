"""How a failure reads in a job's error: the innermost exception first, errno names spelled out."""

from __future__ import annotations

import errno
import re

TRACEBACK_LINES = 6
"""Lines of the traceback, above the exception, that a trial's error keeps."""
ANSI = re.compile(r"\x1b\[[0-9;]*m")
ERRNO = re.compile(r"\[Errno (\d+)\]")


def name_errnos(text: str) -> str:
    """``[Errno 28]`` -> ``[Errno 28 ENOSPC]``: the name is what operators search for."""
    return ERRNO.sub(lambda m: f"[Errno {m[1]} {errno.errorcode.get(int(m[1]), '?')}]", text)


def os_error(error: OSError) -> str:
    """An OSError as a job's reason: what failed, the errno's name and the path."""
    code = errno.errorcode.get(error.errno or 0)
    if code is None:
        return f"{type(error).__name__}: {error}"
    where = f": {error.filename}" if error.filename else ""
    return f"{type(error).__name__} [{code}] {error.strerror or error}{where}"


def summarise_traceback(text: str, context_lines: int = TRACEBACK_LINES) -> str:
    """``Type: message`` of the innermost exception first, then the traceback's last lines above it.

    Ray wraps a rank's exception in its own (WorkerGroupError, RayTaskError) and colours the text; the innermost
    exception is the last line that is neither indented nor a ``File``/``Traceback`` line.
    """
    lines = [ANSI.sub("", line).rstrip() for line in text.splitlines() if line.strip(" \t^~")]
    heads = [i for i, line in enumerate(lines) if not line.startswith((" ", "\t", "Traceback", "[")) and ":" in line]
    if not heads:
        return "\n".join(lines[-context_lines:]) or "the trial failed without an error message"
    head = heads[-1]
    message = name_errnos("\n".join(lines[head:]))
    return message + "\n" + "\n".join(lines[max(0, head - context_lines) : head])
