"""Δm%: a multi-task model's average relative change against single-task reference values.

    Δm% = mean over metrics m of (-1)^{h_m} (M_m - M_ref,m) / M_ref,m * 100,   h_m = 1 if higher is better

so every metric counts as a relative loss: Δm% is lower-is-better, and a negative value means the model
beats the single-task references on average (the convention of Nash-MTL, FAMO and the random-weighting paper).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from flatmtl.workers.problems.errors import ProblemError


def delta_m(
    results: Mapping[str, float],
    references: Mapping[str, float],
    directions: Mapping[str, bool | None],
    *,
    average: Literal["metrics", "tasks"] = "metrics",
) -> float:
    """Δm% over the metrics named in ``references`` (keys ``"task/metric"``).

    ``average="tasks"`` first averages within each task (the part before ``/``), then over tasks, so a task
    with five metrics (normals) weighs as much as a task with one.
    """
    if not references:
        raise ProblemError("delta_m needs at least one reference value")
    per_task: dict[str, list[float]] = {}
    for key, reference in references.items():
        if key not in results:
            raise ProblemError(f"delta_m: no result for reference metric {key!r}; results have {sorted(results)}")
        higher_is_better = directions.get(key)
        if higher_is_better is None:
            raise ProblemError(f"delta_m: metric {key!r} has no direction (higher or lower is better)")
        if reference == 0:
            raise ProblemError(f"delta_m: reference value of {key!r} is 0; a relative change is undefined")
        sign = -1.0 if higher_is_better else 1.0
        per_task.setdefault(key.split("/", 1)[0], []).append(sign * (results[key] - reference) / reference * 100.0)
    if average == "metrics":
        changes = [c for task in per_task.values() for c in task]
        return sum(changes) / len(changes)
    if average == "tasks":
        return sum(sum(task) / len(task) for task in per_task.values()) / len(per_task)
    raise ProblemError(f"delta_m: average must be 'metrics' or 'tasks', got {average!r}")
