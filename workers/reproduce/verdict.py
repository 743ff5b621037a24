"""From measured numbers to a plain verdict, by one rule stated in the report.

Each claim is split into checks, each a yes/no statement about measured numbers (``Check``). The
verdict is ``reproduced`` when every check holds, ``partly`` when at least half hold, ``not`` otherwise.
A check that cannot be decided (a diverged run, too few seeds for a spread) counts as not holding and
says why, so a verdict never rests on numbers that were not measured.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

REPRODUCED = "reproduced"
PARTLY = "partly"
NOT = "not"
VERDICTS = (REPRODUCED, PARTLY, NOT)
RULE = "reproduced: every check holds; partly: at least half hold; not: fewer than half hold."


@dataclass(frozen=True)
class Check:
    """One statement of a claim, whether the numbers support it, and the numbers."""

    statement: str
    holds: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def verdict(checks: Sequence[Check]) -> str:
    if not checks:
        raise ValueError("a verdict needs at least one check")
    held = sum(check.holds for check in checks)
    if held == len(checks):
        return REPRODUCED
    if 2 * held >= len(checks):
        return PARTLY
    return NOT


def finite(*values: float) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


def greater(statement: str, left: float, right: float, *, names: tuple[str, str], digits: int = 3) -> Check:
    """``left > right``; undecided (not holding) when either is not a finite number."""
    detail = f"{names[0]} {left:.{digits}f} vs {names[1]} {right:.{digits}f}"
    return Check(statement, finite(left, right) and left > right, detail)


def at_most(statement: str, value: float, bound: float, *, name: str, digits: int = 3) -> Check:
    """``value <= bound``; undecided (not holding) when either is not a finite number."""
    detail = f"{name} {value:.{digits}f} (bound {bound:.{digits}f})"
    return Check(statement, finite(value, bound) and value <= bound, detail)
