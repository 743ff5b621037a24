"""Domain errors of the control plane; the API maps each to one HTTP status."""

from __future__ import annotations

from collections.abc import Sequence

from flatmtl.service.validation import FieldProblem


class ServiceError(Exception):
    """Base class: ``message`` is safe to show to clients."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFoundError(ServiceError):
    """The job, trial or artifact does not exist (404)."""


class ConflictError(ServiceError):
    """The request contradicts the job's state or an earlier request (409)."""


class ForbiddenError(ServiceError):
    """The caller may not act on this object (403)."""


class InvalidInputError(ServiceError):
    """Input that passed the schema but not a check that needs the server's settings (422, field by field)."""

    def __init__(self, problems: Sequence[FieldProblem]) -> None:
        super().__init__("invalid request: " + "; ".join(str(p) for p in problems[:3]))
        self.problems = list(problems)


class LeaseLostError(ServiceError):
    """A worker's fencing token no longer matches: the job was requeued, cancelled or finished."""


class UnrunnableError(ServiceError):
    """No live worker can run what the spec names (422): ``field``, the ``value`` and what is ``allowed``."""

    def __init__(self, field: str, value: str, allowed: str) -> None:
        super().__init__(f"{field}: no live worker can run {value!r}; they run: {allowed}")
        self.field, self.value, self.allowed = field, value, allowed
