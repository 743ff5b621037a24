"""What every claim hands the report: its runs to train, then its tables, figures, checks and numbers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flatmtl.workers.reproduce.scale import Scale
from flatmtl.workers.reproduce.verdict import Check, verdict


@dataclass(frozen=True)
class Context:
    """Where a claim writes (``figures``: the PNG folder) and what it may use."""

    scale: Scale
    figures: Path
    mnist_dir: Path | None
    echo: Callable[[str], None] = print


@dataclass
class ClaimResult:
    number: int
    title: str
    source: str
    claim: str
    setup: str
    checks: list[Check]
    tables: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return verdict(self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "title": self.title,
            "source": self.source,
            "claim": self.claim,
            "setup": self.setup,
            "verdict": self.verdict,
            "checks": [check.as_dict() for check in self.checks],
            "figures": self.figures,
            "notes": self.notes,
            "numbers": self.numbers,
        }
