"""Metrics, losses and Δm% against values computed by hand from their definitions."""

from __future__ import annotations

import math

import pytest
import torch

from flatmtl.workers.problems import ProblemError, delta_m
from flatmtl.workers.problems.metrics import (
    ClassificationMeter,
    DepthMeter,
    NormalMeter,
    RegressionMeter,
    SegmentationMeter,
    expected_calibration_error,
)
from flatmtl.workers.problems.tasks import (
    Binary,
    Classification,
    Depth,
    Normal,
    Regression,
    Segmentation,
    Task,
    stack_losses,
)


def test_ece_is_zero_when_confidence_matches_accuracy_in_every_bin() -> None:
    # bin (0.7, 0.8]: 10 samples at 0.8, 8 right; bin (0.5, 0.6]: 5 samples at 0.6, 3 right.
    probs = torch.tensor([[0.8, 0.2]] * 10 + [[0.4, 0.6]] * 5, dtype=torch.float64)
    labels = torch.tensor([0] * 8 + [1] * 2 + [1] * 3 + [0] * 2)
    assert expected_calibration_error(probs, labels, bins=10) == pytest.approx(0.0, abs=1e-12)


def test_ece_of_overconfident_predictions() -> None:
    # 4 samples at confidence 0.9 with 2 right (gap 0.4), 6 samples at 0.6 with 6 right (gap 0.4 the other way):
    # ECE = 4/10 * 0.4 + 6/10 * 0.4 = 0.4.
    probs = torch.tensor([[0.9, 0.05, 0.05]] * 4 + [[0.2, 0.6, 0.2]] * 6, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 2] + [1] * 6)
    assert expected_calibration_error(probs, labels, bins=10) == pytest.approx(0.4)
    meter = ClassificationMeter(3, bins=10)
    meter.update(probs.log()[:5], labels[:5])
    meter.update(probs.log()[5:], labels[5:])
    result = meter.compute()
    assert result["ece"] == pytest.approx(0.4) and result["accuracy"] == pytest.approx(0.8)
    # Brier: right at 0.9 -> 0.01 + 2 * 0.0025; wrong at 0.9 -> 0.81 + 0.9025 + 0.0025; right at 0.6 -> 0.16 + 2 * 0.04
    expected_brier = (2 * 0.015 + 2 * (0.81 + 0.9025 + 0.0025) + 6 * 0.24) / 10
    assert result["brier"] == pytest.approx(expected_brier)
    entropy_high = -(0.9 * math.log(0.9) + 2 * 0.05 * math.log(0.05))
    entropy_low = -(0.6 * math.log(0.6) + 2 * 0.2 * math.log(0.2))
    assert result["entropy"] == pytest.approx((4 * entropy_high + 6 * entropy_low) / 10)


def test_uniform_predictions_have_known_brier_and_entropy() -> None:
    meter = ClassificationMeter(4)
    meter.update(torch.zeros(8, 4), torch.arange(8) % 4)
    result = meter.compute()
    assert result["brier"] == pytest.approx(1 - 1 / 4) and result["entropy"] == pytest.approx(math.log(4))


def test_binary_meter_counts_f1_of_the_positive_class() -> None:
    meter = ClassificationMeter(2, binary=True)
    # predictions 1 1 1 0 0 0 against targets 1 1 0 1 0 0: tp 2, fp 1, fn 1 -> F1 = 4 / 6
    logits = torch.tensor([[2.0], [1.0], [3.0], [-1.0], [-2.0], [-0.5]])
    meter.update(logits, torch.tensor([1.0, 1, 0, 1, 0, 0]))
    result = meter.compute()
    assert result["f1"] == pytest.approx(4 / 6) and result["accuracy"] == pytest.approx(4 / 6)
    assert meter.directions["f1"] is True and meter.directions["entropy"] is None


def test_meters_merge_by_summing_states() -> None:
    torch.manual_seed(0)
    logits, labels = torch.randn(40, 5), torch.randint(0, 5, (40,))
    whole, first, second = ClassificationMeter(5), ClassificationMeter(5), ClassificationMeter(5)
    whole.update(logits, labels)
    first.update(logits[:17], labels[:17])
    second.update(logits[17:], labels[17:])
    first.state += second.state
    assert first.compute() == pytest.approx(whole.compute())


def test_miou_and_pixel_accuracy_on_a_small_confusion() -> None:
    # true 0 0 1 1 | 2 (ignored) ; predicted 0 1 1 1 | 0 -> IoU_0 = 1/2, IoU_1 = 2/3; class 2 absent everywhere.
    target = torch.tensor([[[0, 0, 1, 1, -1]]])
    predicted = torch.tensor([[[0, 1, 1, 1, 0]]])
    logits = torch.nn.functional.one_hot(predicted, 3).permute(0, 3, 1, 2).float()
    meter = SegmentationMeter(3)
    meter.update(logits, target)
    result = meter.compute()
    assert result["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert result["pixel_accuracy"] == pytest.approx(3 / 4)


def test_depth_errors_skip_pixels_without_ground_truth() -> None:
    target = torch.tensor([2.0, 4.0, 0.0, 1.0]).view(1, 1, 2, 2)
    output = torch.tensor([3.0, 3.0, 9.0, 1.5]).view(1, 1, 2, 2)
    meter = DepthMeter()
    meter.update(output, target)
    result = meter.compute()
    assert result["abs_error"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert result["rel_error"] == pytest.approx((1 / 2 + 1 / 4 + 0.5) / 3)
    assert Depth().loss(output, target).item() == pytest.approx((1 + 1 + 0.5) / 3)


def normals_at(angles_degrees: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions at the given angles from the true normal (1, 0, 0), as [1, 3, 1, n] maps."""
    radians = torch.deg2rad(torch.tensor(angles_degrees, dtype=torch.float64))
    pred = torch.stack([radians.cos(), radians.sin(), torch.zeros_like(radians)]).view(1, 3, 1, -1)
    true = torch.zeros_like(pred)
    true[:, 0] = 1.0
    return pred, true


def test_normal_angle_statistics() -> None:
    pred, true = normals_at([5.0, 15.0, 25.0, 40.0, 50.0])
    pred = pred * 3.0  # the prediction's length does not matter
    true = torch.cat([true, torch.zeros(1, 3, 1, 1, dtype=torch.float64)], dim=3)  # one pixel without a normal
    pred = torch.cat([pred, torch.ones(1, 3, 1, 1, dtype=torch.float64)], dim=3)
    meter = NormalMeter()
    meter.update(pred, true)
    result = meter.compute()
    assert result["mean_angle"] == pytest.approx(27.0)
    assert result["median_angle"] == pytest.approx(25.0, abs=0.011)
    assert (result["within_11.25"], result["within_22.5"], result["within_30"]) == pytest.approx((0.2, 0.4, 0.6))
    assert Normal().loss(pred.float(), true.float()).item() == pytest.approx(
        1 - sum(math.cos(math.radians(a)) for a in (5, 15, 25, 40, 50)) / 5, rel=1e-5
    )


def test_normal_median_matches_the_exact_median_within_a_bin() -> None:
    angles = torch.rand(1001, generator=torch.Generator().manual_seed(0)) * 90
    pred, true = normals_at(angles.tolist())
    meter = NormalMeter()
    meter.update(pred[..., :400], true[..., :400])
    meter.update(pred[..., 400:], true[..., 400:])
    assert meter.compute()["median_angle"] == pytest.approx(float(angles.median()), abs=0.011)


def test_segmentation_loss_ignores_unlabelled_pixels() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]]).T.reshape(1, 2, 1, 2)
    full = Segmentation(2).loss(logits, torch.tensor([[[0, 1]]]))
    ignored = Segmentation(2).loss(logits, torch.tensor([[[0, -1]]]))
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert full.item() == pytest.approx(expected) and ignored.item() == pytest.approx(expected)


def test_mae_is_reported_in_original_units() -> None:
    meter = RegressionMeter(scale=10.0)
    meter.update(torch.tensor([[0.5], [1.0]]), torch.tensor([0.0, 0.0]))
    assert meter.compute()["mae"] == pytest.approx(7.5)


def test_delta_m_counts_improvements_as_negative() -> None:
    directions = {"seg/miou": True, "depth/abs_error": False, "depth/rel_error": False}
    references = {"seg/miou": 0.40, "depth/abs_error": 0.50, "depth/rel_error": 0.20}
    # miou up 10% (better, -10), abs error down 10% (better, -10), rel error up 50% (worse, +50)
    results = {"seg/miou": 0.44, "depth/abs_error": 0.45, "depth/rel_error": 0.30}
    assert delta_m(results, references, directions) == pytest.approx((-10 - 10 + 50) / 3)
    assert delta_m(results, references, directions, average="tasks") == pytest.approx((-10 + (-10 + 50) / 2) / 2)
    assert delta_m(references, references, directions) == 0.0
    better = {"seg/miou": 0.5, "depth/abs_error": 0.4, "depth/rel_error": 0.1}
    assert delta_m(better, references, directions) < 0


def test_delta_m_rejects_metrics_without_direction_or_result() -> None:
    with pytest.raises(ProblemError, match="no direction"):
        delta_m({"a/entropy": 1.0}, {"a/entropy": 2.0}, {"a/entropy": None})
    with pytest.raises(ProblemError, match="no result"):
        delta_m({}, {"a/accuracy": 0.5}, {"a/accuracy": True})


def test_stacked_losses_score_columnwise_tasks_together_exactly_as_one_by_one() -> None:
    generator = torch.Generator().manual_seed(0)
    tasks = [
        Task("b0", Binary()),
        Task("r0", Regression(scale=2.0)),
        Task("c", Classification(3)),
        Task("b1", Binary()),
        Task("r1", Regression(scale=2.0)),
        Task("b2", Binary(ece_bins=5)),
    ]
    n = 7
    outputs = [
        torch.randn(n, task.kind.out_channels, generator=generator, dtype=torch.float64, requires_grad=True)
        for task in tasks
    ]
    targets = [
        torch.randint(0, 3, (n,), generator=generator)
        if isinstance(task.kind, Classification)
        else torch.randint(0, 2, (n,), generator=generator).double()
        for task in tasks
    ]
    stacked = stack_losses(tasks, outputs, targets)
    one_by_one = torch.stack([t.kind.loss(o, y) for t, o, y in zip(tasks, outputs, targets, strict=True)])
    torch.testing.assert_close(stacked, one_by_one, rtol=1e-12, atol=0)
    weights = torch.arange(1.0, len(tasks) + 1, dtype=torch.float64)
    grouped = torch.autograd.grad(stacked @ weights, outputs)
    separate = torch.autograd.grad(one_by_one @ weights, outputs)
    for a, b in zip(grouped, separate, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    all_binary = [Task(f"b{k}", Binary()) for k in range(3)]
    assert stack_losses(all_binary, outputs[:1] * 3, targets[:1] * 3).shape == (3,)
    with pytest.raises(ValueError, match="3 tasks, 2 outputs"):
        stack_losses(all_binary, outputs[:2], targets[:3])


def test_stacked_losses_under_bf16_autocast_match_one_by_one_and_group_by_batch_size() -> None:
    generator = torch.Generator().manual_seed(1)
    tasks = [Task("r0", Regression()), Task("b0", Binary()), Task("r1", Regression()), Task("b1", Binary())]
    sizes = [6, 6, 6, 4]  # the last task's input is another batch (multi-input problems)
    layer = torch.nn.Linear(3, 1)
    inputs = [torch.randn(n, 3, generator=generator) for n in sizes]
    targets = [torch.randint(0, 2, (n,), generator=generator).float() for n in sizes]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = [layer(x) for x in inputs]
        assert outputs[0].dtype == torch.bfloat16
        stacked = stack_losses(tasks, outputs, targets)
        one_by_one = torch.stack([t.kind.loss(o, y) for t, o, y in zip(tasks, outputs, targets, strict=True)])
    assert stacked.dtype == one_by_one.dtype == torch.float32
    torch.testing.assert_close(stacked, one_by_one, rtol=1e-6, atol=1e-7)


def test_dense_losses_average_over_the_measured_pixels_only() -> None:
    """Depth and normal losses by their definitions, on maps where some pixels carry no measurement (zeros)."""
    from torch.nn.functional import normalize

    from flatmtl.workers.problems.tasks import Depth, Normal

    generator = torch.Generator().manual_seed(0)
    target = torch.rand(2, 1, 4, 4, generator=generator, dtype=torch.float64)
    target[0, 0, :2] = 0.0
    output = torch.rand(2, 1, 4, 4, generator=generator, dtype=torch.float64)
    measured = target != 0
    expected = (output - target).abs()[measured].mean()
    torch.testing.assert_close(Depth().loss(output, target), expected, rtol=1e-12, atol=0)
    normals = normalize(torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.float64), dim=1)
    normals[1, :, 3] = 0.0
    predicted = torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.float64)
    cosine = (normalize(predicted, dim=1) * normals).sum(dim=1)
    expected = 1 - cosine[(normals != 0).any(dim=1)].mean()
    torch.testing.assert_close(Normal().loss(predicted, normals), expected, rtol=1e-12, atol=0)
