"""A trial's epoch report, as the ``(step, name, value)`` points the worker stores with ``queue.record_metrics``.

Stored: every metric of the epoch record (``train/...``, ``test/...``, ``<split>/mean/...``, ``lr``,
``delta_m``, ``epoch``) at the run's global step, plus the telemetry points the API exports for running
jobs (``flatmtl.service.telemetry.points.training_points``): the epoch-mean losses and conflict ratio, the last step's
gradient norms, cosines and magnitude similarities, the samples so far and the mean step time. A sweep's
trials store them too, since the API exports a running trial's series with a ``trial`` label just as a
training job's. Where both name the same series, the telemetry point is the one stored.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from flatmtl.service.telemetry.points import Point, training_points
from flatmtl.workers.mtl import diagnostics
from flatmtl.workers.worker.contracts import TELEMETRY_KEY

RECORD_SCALARS = ("epoch", "lr", "delta_m")


def epoch_record(result: dict[str, Any]) -> dict[str, float]:
    """The metrics the ranks reported (Tune's own result keys dropped); non-numbers are left out."""
    record: dict[str, float] = {}
    for key, value in result.items():
        if ("/" in key or key in RECORD_SCALARS) and not key.startswith(TELEMETRY_KEY):
            if isinstance(value, int | float) and not isinstance(value, bool):
                record[key] = float(value)
            elif value is None:
                record[key] = math.nan  # strict JSON in the run files wrote a non-finite number as null
    return record


def _telemetry(result: dict[str, Any]) -> dict[str, Any] | None:
    """Rank 0's telemetry payload, whether Tune kept it nested or flattened it with '/'."""
    nested = result.get(TELEMETRY_KEY)
    if isinstance(nested, dict):
        return nested
    prefix = TELEMETRY_KEY + "/"
    flat = {key[len(prefix) :]: value for key, value in result.items() if key.startswith(prefix)}
    return flat or None


def telemetry_points(step: int, record: dict[str, float], payload: dict[str, Any]) -> list[Point]:
    """``training_points`` for one epoch end; gradient geometry is NaN when the method formed no Gram matrix."""
    tasks: list[str] = payload["tasks"]
    num_tasks = len(tasks)
    global_batch = int(payload["global_batch"])
    throughput = record.get("train/samples_per_s", math.nan)
    step_seconds = global_batch / throughput if throughput > 0 else math.nan
    if not step_seconds > 0:
        return []
    losses = [record.get(f"train/loss/{task}", math.nan) for task in tasks]
    if payload.get("gram") is not None:
        gram = torch.tensor(payload["gram"], dtype=torch.float64)
        norms = diagnostics.task_norms(gram).tolist()
        cosines = diagnostics.cosine_matrix(gram).tolist()
        magnitudes = diagnostics.magnitude_similarity_matrix(gram).tolist()
        conflict = record.get("train/conflict_ratio", diagnostics.conflict_ratio(gram))
    else:
        norms = [math.nan] * num_tasks
        cosines = magnitudes = [[math.nan] * num_tasks for _ in tasks]
        conflict = record.get("train/conflict_ratio", math.nan)
    return training_points(
        step,
        tasks=tasks,
        samples_total=step * global_batch,
        step_seconds=step_seconds,
        losses=losses,
        gradient_norms=norms,
        cosines=cosines,
        magnitude_similarities=magnitudes,
        conflict_ratio=conflict,
        sam_wrapper_share=record.get("train/sam_share", 0.0),
        aggregation_share=record.get("train/aggregation_share", 0.0),
        communication_bytes=record.get("train/communication_bytes", 0.0),
    )


def result_points(result: dict[str, Any]) -> tuple[int, list[Point]]:
    """The report's global step and its points (telemetry only in reports that carry rank 0's payload)."""
    step = int(result["step"])
    record = epoch_record(result)
    payload = _telemetry(result)
    extra = telemetry_points(step, record, payload) if payload is not None else []
    taken = {name for _, name, _ in extra}
    return step, [(step, name, value) for name, value in record.items() if name not in taken] + extra
