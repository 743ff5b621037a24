"""Accuracy over seeds for the two-task canvas problems, shared by the claims that compare methods."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from flatmtl.workers.reproduce.runs import RunRecord
from flatmtl.workers.reproduce.stats import Summary, paired_difference, summarize

TASKS = ("top_left", "bottom_right")
TASK_LABELS = {"top_left": "top-left", "bottom_right": "bottom-right"}


def task_accuracy(record: RunRecord, task: str) -> float:
    """Final test accuracy in percent (NaN for a failed run)."""
    return 100.0 * record.metric(f"{task}/accuracy")


def average_accuracy(record: RunRecord) -> float:
    values = [task_accuracy(record, task) for task in TASKS]
    return math.fsum(values) / len(values)


@dataclass(frozen=True)
class AccuracyRow:
    """One method over seeds: per-task and average accuracy (percent), and the per-seed averages."""

    label: str
    tasks: dict[str, Summary]
    average: Summary
    per_seed: list[float]
    failed: int

    def cells(self) -> list[str]:
        return [self.label, *(self.tasks[t].text() for t in TASKS), self.average.text()]

    def as_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            **{f"{t}_accuracy": self.tasks[t].as_dict() for t in TASKS},
            "average_accuracy": self.average.as_dict(),
            "per_seed_average": self.per_seed,
            "failed_runs": self.failed,
        }


def accuracy_row(label: str, records: Sequence[RunRecord]) -> AccuracyRow:
    per_seed = [average_accuracy(r) for r in records]
    return AccuracyRow(
        label=label,
        tasks={t: summarize(task_accuracy(r, t) for r in records) for t in TASKS},
        average=summarize(per_seed),
        per_seed=per_seed,
        failed=sum(not r.succeeded for r in records),
    )


def improvement(treated: AccuracyRow, base: AccuracyRow) -> Summary:
    """Paired per-seed difference of average accuracy (percentage points)."""
    return paired_difference(treated.per_seed, base.per_seed)


def signed(summary: Summary) -> str:
    if not math.isfinite(summary.mean):
        return "n/a"
    spread = f" ± {summary.std:.2f}" if math.isfinite(summary.std) else ""
    return f"{summary.mean:+.2f}{spread}"
