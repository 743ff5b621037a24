"""Checks keyword options against what a constructor accepts, so a typo fails with the allowed names."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from flatmtl.workers.problems.errors import ProblemError


def accepted_options(factory: Callable[..., Any], *, skip: tuple[str, ...] = ()) -> list[str]:
    """Keyword-settable parameters of ``factory`` (a class or function), minus ``skip``."""
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = inspect.signature(factory).parameters.values()
    return [p.name for p in params if p.kind in kinds and p.name not in skip and p.name != "self"]


def check_options(
    owner: str, factory: Callable[..., Any], options: Mapping[str, Any], *, skip: tuple[str, ...] = ()
) -> None:
    allowed = accepted_options(factory, skip=skip)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ProblemError(f"{owner}: unknown option(s) {unknown}; allowed: {allowed}")


def check_fraction(owner: str, field: str, value: float) -> None:
    """A fraction strictly between 0 and 1 (a share of the data held out)."""
    if not 0 < value < 1:
        raise ProblemError(f"{owner}: {field} must be in (0, 1), got {value}")
