"""Epoch reports as stored points: Tune's own keys dropped, task means, telemetry from the Gram matrix."""

from __future__ import annotations

import math

import pytest
import torch

from flatmtl.service.telemetry.names import POINT_CONFLICT_RATIO, POINT_SAMPLES, POINT_STEP_SECONDS
from flatmtl.workers.worker.contracts import TELEMETRY_KEY
from flatmtl.workers.worker.points import epoch_record, result_points
from flatmtl.workers.worker.ranks import task_means

TASKS = ("top_left", "bottom_right")


def record() -> dict[str, float]:
    return {
        "epoch": 2,
        "step": 12,
        "lr": 0.001,
        "train/loss/top_left": 1.5,
        "train/loss/bottom_right": 0.5,
        "train/loss": 1.0,
        "train/samples_per_s": 640.0,
        "train/sam_share": 0.25,
        "train/aggregation_share": 0.1,
        "train/communication_bytes": 4096.0,
        "train/conflict_ratio": 0.5,
        "test/top_left/accuracy": 0.6,
        "test/bottom_right/accuracy": 0.8,
        "test/top_left/ece": 0.1,
    }


def test_task_means_average_every_metric_all_tasks_have() -> None:
    means = task_means(record())
    assert means == {"test/mean/accuracy": pytest.approx((0.6 + 0.8) / 2)}  # ece: one task only, no mean


def test_epoch_record_keeps_the_ranks_metrics_and_drops_tunes() -> None:
    result = {
        **record(),
        "training_iteration": 2,
        "time_total_s": 3.0,
        "trial_id": "abc",
        "config": {"trial_index": 0},
        "delta_m": None,
        TELEMETRY_KEY: {"tasks": list(TASKS)},
    }
    stored = epoch_record(result)
    assert set(stored) == {k for k in record() if k != "step"} | {"delta_m"}
    assert math.isnan(stored["delta_m"])  # a null in the run files is a non-finite number


def test_reports_store_telemetry_points_computed_from_the_gram_matrix() -> None:
    g1, g2 = torch.tensor([3.0, 0.0, 4.0], dtype=torch.float64), torch.tensor([-1.0, 2.0, 0.0], dtype=torch.float64)
    gram = torch.stack([g1, g2]) @ torch.stack([g1, g2]).T
    result = {
        **record(),
        TELEMETRY_KEY: {"tasks": list(TASKS), "global_batch": 64, "losses": [1.4, 0.6], "gram": gram.tolist()},
    }
    step, points = result_points(result)
    values = {name: value for _, name, value in points}
    assert step == 12 and {s for s, _, _ in points} == {12}
    cosine = float(g1 @ g2 / (g1.norm() * g2.norm()))
    magnitude = float(2 * g1.norm() * g2.norm() / (g1.norm() ** 2 + g2.norm() ** 2))
    assert values[f"train/cosine/{TASKS[0]}/{TASKS[1]}"] == pytest.approx(cosine)
    assert values["train/cosine_min"] == pytest.approx(cosine)
    assert values[f"train/magnitude_similarity/{TASKS[0]}/{TASKS[1]}"] == pytest.approx(magnitude)
    assert values[f"train/grad_norm/{TASKS[0]}"] == pytest.approx(5.0)
    assert values["train/communication_bytes"] == 4096.0
    assert values[POINT_SAMPLES] == 12 * 64
    assert values[POINT_STEP_SECONDS] == pytest.approx(64 / 640.0)
    assert values["train/step_ratio/sam_wrapper"] == pytest.approx(0.25)
    assert values["train/loss/top_left"] == 1.5  # the epoch mean, stored once
    assert [name for _, name, _ in points].count("train/loss/top_left") == 1
    assert values["test/top_left/accuracy"] == 0.6


def test_a_report_without_ranks_telemetry_stores_only_its_epoch_record() -> None:
    step, points = result_points(record())  # a replayed epoch of a resumed trial: only the last one has a payload
    assert step == 12 and {name: value for _, name, value in points} == {
        k: v for k, v in record().items() if k != "step"
    }


def test_a_method_without_a_gram_matrix_reports_nan_geometry() -> None:
    without = {k: v for k, v in record().items() if k != "train/conflict_ratio"}  # as the Trainer logs it then
    result = {**without, TELEMETRY_KEY: {"tasks": list(TASKS), "global_batch": 64, "losses": [1.0, 1.0], "gram": None}}
    values = {name: value for _, name, value in result_points(result)[1]}
    assert math.isnan(values[f"train/grad_norm/{TASKS[0]}"]) and math.isnan(values[POINT_CONFLICT_RATIO])
    assert values[POINT_SAMPLES] == 12 * 64
