"""What a worker writes: one training step's metrics as the ``train/...`` points the collector exports."""

from __future__ import annotations

import math
from collections.abc import Sequence

from flatmtl.service.telemetry.names import (
    MAX_PAIR_TASKS,
    POINT_COMMUNICATION,
    POINT_CONFLICT_RATIO,
    POINT_COSINE_MEAN,
    POINT_COSINE_MIN,
    POINT_MAGNITUDE_MEAN,
    POINT_MAGNITUDE_MIN,
    POINT_PREFIX,
    POINT_SAMPLES,
    POINT_STEP_SECONDS,
)

Point = tuple[int, str, float]


def _check_square(name: str, matrix: Sequence[Sequence[float]], size: int) -> None:
    if len(matrix) != size or any(len(row) != size for row in matrix):
        raise ValueError(f"{name} must be a {size} x {size} matrix (one row and column per task)")


def training_points(
    step: int,
    *,
    tasks: Sequence[str],
    samples_total: int,
    step_seconds: float,
    losses: Sequence[float],
    gradient_norms: Sequence[float],
    cosines: Sequence[Sequence[float]],
    magnitude_similarities: Sequence[Sequence[float]],
    conflict_ratio: float,
    sam_wrapper_share: float = 0.0,
    aggregation_share: float = 0.0,
    communication_bytes: float = 0.0,
    sharpness: Sequence[float] | None = None,
) -> list[Point]:
    """One step's metrics as ``(step, name, value)`` points for ``flatmtl.service.queue.record_metrics``.

    ``cosines`` and ``magnitude_similarities`` are K x K (``flatmtl.workers.mtl.diagnostics``); per-pair points
    are written only for K <= MAX_PAIR_TASKS so a 40-task job adds 2 series, not 1560. The phase shares
    are fractions of ``step_seconds`` (the SAM wrapper's perturbed passes, the aggregation).
    """
    num_tasks = len(tasks)
    for task in tasks:
        if not task or "/" in task:
            raise ValueError(f"task name {task!r} must be non-empty and contain no '/'")
    for field_name, values in (("losses", losses), ("gradient_norms", gradient_norms), ("sharpness", sharpness)):
        if values is not None and len(values) != num_tasks:
            raise ValueError(f"{field_name} has {len(values)} values; expected one per task ({num_tasks})")
    _check_square("cosines", cosines, num_tasks)
    _check_square("magnitude_similarities", magnitude_similarities, num_tasks)
    if step_seconds <= 0 or samples_total < 0:
        raise ValueError(f"step_seconds must be > 0 (got {step_seconds}) and samples_total >= 0 (got {samples_total})")

    points: list[Point] = [
        (step, POINT_SAMPLES, float(samples_total)),
        (step, POINT_STEP_SECONDS, float(step_seconds)),
        (step, POINT_CONFLICT_RATIO, float(conflict_ratio)),
        (step, POINT_COMMUNICATION, float(communication_bytes)),
        (step, f"{POINT_PREFIX}step_ratio/sam_wrapper", float(sam_wrapper_share)),
        (step, f"{POINT_PREFIX}step_ratio/aggregation", float(aggregation_share)),
    ]
    per_task = {"loss": losses, "grad_norm": gradient_norms, "sharpness": sharpness}
    for kind, values in per_task.items():
        if values is not None:
            points += [(step, f"{POINT_PREFIX}{kind}/{task}", float(v)) for task, v in zip(tasks, values, strict=True)]
    pairs = [(a, b) for a in range(num_tasks) for b in range(a + 1, num_tasks)]
    for kind, matrix, low, mean in (
        ("cosine", cosines, POINT_COSINE_MIN, POINT_COSINE_MEAN),
        ("magnitude_similarity", magnitude_similarities, POINT_MAGNITUDE_MIN, POINT_MAGNITUDE_MEAN),
    ):
        values = [float(matrix[a][b]) for a, b in pairs] or [1.0]
        points += [(step, low, min(values)), (step, mean, math.fsum(values) / len(values))]
        if num_tasks <= MAX_PAIR_TASKS:
            points += [(step, f"{POINT_PREFIX}{kind}/{tasks[a]}/{tasks[b]}", float(matrix[a][b])) for a, b in pairs]
    return points
