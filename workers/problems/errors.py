"""Errors a user of the problems package can act on: a bad name or option, or data that is not where it was said."""

from __future__ import annotations


class ProblemError(ValueError):
    """An unknown problem, model or option, or an option value out of range; the message names it."""


class DataNotFoundError(FileNotFoundError):
    """A data file or folder that a loader needs is missing; the message names the path and the expected layout."""

    def __init__(self, path: object, expected: str) -> None:
        super().__init__(f"missing {path}: {expected}")
        self.path = path
