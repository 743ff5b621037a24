"""Domain errors of the control plane; the API maps each to one HTTP status."""

from __future__ import annotations


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


class LeaseLostError(ServiceError):
    """A worker's fencing token no longer matches: the job was requeued, cancelled or finished."""
