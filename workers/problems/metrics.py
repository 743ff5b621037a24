"""Per-task metrics as accumulators of sufficient statistics.

Every meter keeps its statistics in one float64 vector ``state`` that is a sum over samples, so an
evaluation split over ranks is merged by summing (``all_reduce``) the states before ``compute()``.
``directions`` maps each metric name to True (higher is better), False (lower is better) or None
(descriptive only, e.g. predictive entropy; never used in Δm%).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: N812

DEFAULT_ECE_BINS = 10
NORMAL_THRESHOLDS = (11.25, 22.5, 30.0)
NORMAL_HISTOGRAM_DEGREES = 0.01


class Meter:
    """Sums statistics over batches; subclasses say which and how to turn them into metrics."""

    directions: dict[str, bool | None]

    def __init__(self, size: int) -> None:
        self.state = torch.zeros(size, dtype=torch.float64)

    def reset(self) -> None:
        self.state.zero_()

    def update(self, output: Tensor, target: Tensor) -> None:
        self.state += self.statistics(output.detach(), target.detach()).to(torch.float64).cpu()

    def statistics(self, output: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        raise NotImplementedError


def _ratio(numerator: Tensor | float, denominator: Tensor | float) -> float:
    denominator = float(denominator)
    return float(numerator) / denominator if denominator > 0 else math.nan


def calibration_statistics(probs: Tensor, labels: Tensor, bins: int) -> Tensor:
    """Per equal-width confidence bin ``(b/B, (b+1)/B]``: [count | confidence sum | correct count]."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).to(probs.dtype)
    index = ((confidence * bins).ceil().long() - 1).clamp(0, bins - 1)
    count = torch.zeros(bins, dtype=probs.dtype, device=probs.device).index_add_(0, index, torch.ones_like(confidence))
    conf_sum = torch.zeros_like(count).index_add_(0, index, confidence)
    correct_sum = torch.zeros_like(count).index_add_(0, index, correct)
    return torch.cat([count, conf_sum, correct_sum])


def expected_calibration_error(probs: Tensor, labels: Tensor, bins: int = DEFAULT_ECE_BINS) -> float:
    """ECE = sum over bins of (n_b / N) |accuracy_b - mean confidence_b| (Guo et al., 2017)."""
    stats = calibration_statistics(probs.double(), labels, bins).view(3, bins)
    return _ratio((stats[2] - stats[1]).abs().sum(), stats[0].sum())


def brier_terms(probs: Tensor, labels: Tensor) -> Tensor:
    """Per sample, sum over classes of (p_c - 1[y = c])^2 (Brier's multi-class score)."""
    return ((probs - F.one_hot(labels, probs.shape[1]).to(probs.dtype)) ** 2).sum(dim=1)


def predictive_entropy(probs: Tensor) -> Tensor:
    """Per sample, -sum_c p_c log p_c in nats (0 log 0 = 0)."""
    return -torch.special.xlogy(probs, probs).sum(dim=1)


class ClassificationMeter(Meter):
    """Accuracy and calibration (ECE, Brier, entropy) from logits [N, C], or from one logit [N] or [N, 1] for a
    binary task, which also gets the F1 score of the positive class (0 when it is never predicted nor present)."""

    def __init__(self, num_classes: int, *, binary: bool = False, bins: int = DEFAULT_ECE_BINS) -> None:
        self.num_classes, self.binary, self.bins = num_classes, binary, bins
        super().__init__(4 + 3 * bins + (3 if binary else 0))
        self.directions = {"accuracy": True, "ece": False, "brier": False, "entropy": None}
        if binary:
            self.directions["f1"] = True

    def probabilities(self, output: Tensor) -> Tensor:
        if self.binary:
            positive = torch.sigmoid(output.reshape(-1).double())
            return torch.stack([1 - positive, positive], dim=1)
        return torch.softmax(output.double(), dim=1)

    def statistics(self, output: Tensor, target: Tensor) -> Tensor:
        probs = self.probabilities(output)
        labels = target.reshape(-1).long()
        predicted = probs.argmax(dim=1)
        head = torch.stack(
            [
                (predicted == labels).double().sum(),
                probs.new_tensor(labels.numel()),
                brier_terms(probs, labels).sum(),
                predictive_entropy(probs).sum(),
            ]
        )
        parts = [head, calibration_statistics(probs, labels, self.bins)]
        if self.binary:
            tp = ((predicted == 1) & (labels == 1)).sum()
            fp = ((predicted == 1) & (labels == 0)).sum()
            fn = ((predicted == 0) & (labels == 1)).sum()
            parts.append(torch.stack([tp, fp, fn]).double())
        return torch.cat(parts)

    def compute(self) -> dict[str, float]:
        correct, count, brier, entropy = (self.state[i] for i in range(4))
        bins = self.state[4 : 4 + 3 * self.bins].view(3, self.bins)
        result = {
            "accuracy": _ratio(correct, count),
            "ece": _ratio((bins[2] - bins[1]).abs().sum(), count),
            "brier": _ratio(brier, count),
            "entropy": _ratio(entropy, count),
        }
        if self.binary:
            tp, fp, fn = self.state[-3:]
            result["f1"] = _ratio(2 * tp, 2 * tp + fp + fn) if float(2 * tp + fp + fn) > 0 else 0.0
        return result


def confusion_matrix(predicted: Tensor, target: Tensor, num_classes: int, ignore_index: int = -1) -> Tensor:
    """[C, C] counts, rows the true class and columns the predicted one; ``ignore_index`` pixels skipped."""
    valid = target != ignore_index
    flat = target[valid].long() * num_classes + predicted[valid].long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


class SegmentationMeter(Meter):
    """mIoU (mean over classes present in the target or the prediction) and pixel accuracy, from logits
    [N, C, H, W] and labels [N, H, W] where ``ignore_index`` marks unlabelled pixels."""

    def __init__(self, num_classes: int, ignore_index: int = -1) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        super().__init__(num_classes * num_classes)
        self.directions = {"miou": True, "pixel_accuracy": True}

    def statistics(self, output: Tensor, target: Tensor) -> Tensor:
        return confusion_matrix(output.argmax(dim=1), target, self.num_classes, self.ignore_index).flatten()

    def compute(self) -> dict[str, float]:
        matrix = self.state.view(self.num_classes, self.num_classes)
        true_positive = matrix.diagonal()
        union = matrix.sum(dim=0) + matrix.sum(dim=1) - true_positive
        present = union > 0
        miou = float((true_positive[present] / union[present]).mean()) if bool(present.any()) else math.nan
        return {"miou": miou, "pixel_accuracy": _ratio(true_positive.sum(), matrix.sum())}


def valid_pixels(target: Tensor) -> Tensor:
    """Pixels with ground truth: any non-zero channel (depth 0 and normal (0, 0, 0) mean 'not measured')."""
    return (target != 0).any(dim=1, keepdim=True)


class DepthMeter(Meter):
    """Mean absolute and mean relative depth error over valid pixels, from [N, 1, H, W] maps."""

    def __init__(self) -> None:
        super().__init__(3)
        self.directions = {"abs_error": False, "rel_error": False}

    def statistics(self, output: Tensor, target: Tensor) -> Tensor:
        mask = valid_pixels(target)
        pred, true = output.double()[mask], target.double()[mask]
        error = (pred - true).abs()
        return torch.stack([error.sum(), (error / true.abs()).sum(), error.new_tensor(error.numel())])

    def compute(self) -> dict[str, float]:
        return {"abs_error": _ratio(self.state[0], self.state[2]), "rel_error": _ratio(self.state[1], self.state[2])}


def normal_angles(output: Tensor, target: Tensor) -> Tensor:
    """Angle in degrees between predicted and true normals at valid pixels (both normalised first)."""
    mask = valid_pixels(target).squeeze(1)
    pred = F.normalize(output.double(), dim=1).permute(0, 2, 3, 1)[mask]
    true = F.normalize(target.double(), dim=1).permute(0, 2, 3, 1)[mask]
    return torch.rad2deg(torch.acos((pred * true).sum(dim=1).clamp(-1.0, 1.0)))


class NormalMeter(Meter):
    """Surface-normal angle error: mean, median and the fractions within 11.25, 22.5 and 30 degrees.

    The median comes from a histogram of ``NORMAL_HISTOGRAM_DEGREES``-wide bins (so it is mergeable over
    batches and ranks), interpolated within its bin; the other statistics are exact.
    """

    def __init__(self) -> None:
        self.num_bins = round(180.0 / NORMAL_HISTOGRAM_DEGREES)
        super().__init__(2 + len(NORMAL_THRESHOLDS) + self.num_bins)
        self.directions = {"mean_angle": False, "median_angle": False}
        self.directions.update({f"within_{t:g}": True for t in NORMAL_THRESHOLDS})

    def statistics(self, output: Tensor, target: Tensor) -> Tensor:
        angles = normal_angles(output, target)
        index = (angles / NORMAL_HISTOGRAM_DEGREES).floor().long().clamp(0, self.num_bins - 1)
        histogram = torch.bincount(index, minlength=self.num_bins).double()
        within = torch.stack([(angles < t).sum() for t in NORMAL_THRESHOLDS]).double()
        return torch.cat([torch.stack([angles.sum(), angles.new_tensor(angles.numel())]), within, histogram])

    def compute(self) -> dict[str, float]:
        total, count = self.state[0], self.state[1]
        result = {"mean_angle": _ratio(total, count), "median_angle": self._median(float(count))}
        for i, threshold in enumerate(NORMAL_THRESHOLDS):
            result[f"within_{threshold:g}"] = _ratio(self.state[2 + i], count)
        return result

    def _median(self, count: float) -> float:
        if count == 0:
            return math.nan
        histogram = self.state[2 + len(NORMAL_THRESHOLDS) :]
        cumulative = histogram.cumsum(0)
        half = count / 2
        index = int(torch.searchsorted(cumulative, torch.tensor(half, dtype=torch.float64)))
        before = float(cumulative[index - 1]) if index > 0 else 0.0
        fraction = (half - before) / float(histogram[index])
        return (index + fraction) * NORMAL_HISTOGRAM_DEGREES


class RegressionMeter(Meter):
    """Mean absolute error in the target's original units: predictions and targets are standardised, so the
    error is multiplied back by the target's standard deviation ``scale``."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale
        super().__init__(2)
        self.directions = {"mae": False}

    def statistics(self, output: Tensor, target: Tensor) -> Tensor:
        error = (output.reshape(-1).double() - target.reshape(-1).double()).abs()
        return torch.stack([error.sum(), error.new_tensor(error.numel())])

    def compute(self) -> dict[str, float]:
        return {"mae": self.scale * _ratio(self.state[0], self.state[1])}


AUC_BINS = 4096


def binned_auc(positives: Tensor, negatives: Tensor) -> float:
    """ROC-AUC from per-bin counts of positive and negative scores (bins in increasing score order):
    P(score of a positive > score of a negative) + P(same bin) / 2. Exact when no two samples of different
    labels share a bin; a summable state, unlike the sorted scores an exact AUC needs."""
    positive_total, negative_total = float(positives.sum()), float(negatives.sum())
    if positive_total == 0 or negative_total == 0:
        return math.nan
    negatives_below = torch.cumsum(negatives, 0) - negatives
    wins = (positives * negatives_below).sum() + 0.5 * (positives * negatives).sum()
    return float(wins) / (positive_total * negative_total)


class BinaryMeter(ClassificationMeter):
    """A binary task's accuracy, F1 and calibration, plus ROC-AUC from ``AUC_BINS`` equal-width bins of the
    predicted probability (so ranks merge it by summing, as every meter)."""

    def __init__(self, bins: int = DEFAULT_ECE_BINS, auc_bins: int = AUC_BINS) -> None:
        super().__init__(2, binary=True, bins=bins)
        self.auc_bins = auc_bins
        self.state = torch.zeros(len(self.state) + 2 * auc_bins, dtype=torch.float64)
        self.directions["roc_auc"] = True

    def statistics(self, output: Tensor, target: Tensor) -> Tensor:
        probability = torch.sigmoid(output.reshape(-1).double())
        labels = target.reshape(-1).long()
        index = (probability * self.auc_bins).long().clamp(0, self.auc_bins - 1)
        histograms = torch.zeros(2, self.auc_bins, dtype=torch.float64, device=output.device)
        histograms.index_put_((labels, index), torch.ones_like(probability), accumulate=True)
        return torch.cat([super().statistics(output, target), histograms.flatten()])

    def compute(self) -> dict[str, float]:
        whole = self.state
        self.state = whole[: -2 * self.auc_bins]
        try:
            result = super().compute()
        finally:
            self.state = whole
        histograms = whole[-2 * self.auc_bins :].view(2, self.auc_bins)
        result["roc_auc"] = binned_auc(histograms[1], histograms[0])
        return result


def macro_f1(confusion: Tensor) -> float:
    """Mean F1 over the classes that occur in the targets or the predictions (rows true, columns predicted)."""
    true_positive = confusion.diagonal()
    denominator = confusion.sum(dim=0) + confusion.sum(dim=1)
    seen = denominator > 0
    if not bool(seen.any()):
        return math.nan
    return float((2 * true_positive[seen] / denominator[seen]).mean())


class MulticlassMeter(ClassificationMeter):
    """Accuracy and calibration of a C-class task, plus macro-F1 from the summed confusion matrix."""

    def __init__(self, num_classes: int, bins: int = DEFAULT_ECE_BINS) -> None:
        super().__init__(num_classes, bins=bins)
        self.head_size = len(self.state)
        self.state = torch.zeros(self.head_size + num_classes * num_classes, dtype=torch.float64)
        self.directions["macro_f1"] = True

    def statistics(self, output: Tensor, target: Tensor) -> Tensor:
        matrix = confusion_matrix(output.argmax(dim=1), target.reshape(-1).long(), self.num_classes)
        return torch.cat([super().statistics(output, target), matrix.flatten().double()])

    def compute(self) -> dict[str, float]:
        whole = self.state
        self.state = whole[: self.head_size]
        try:
            result = super().compute()
        finally:
            self.state = whole
        result["macro_f1"] = macro_f1(whole[self.head_size :].view(self.num_classes, self.num_classes))
        return result


class RegressionErrorMeter(Meter):
    """MAE and RMSE in the target's original units (predictions and targets are standardised; ``scale`` is the
    target's standard deviation)."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale
        super().__init__(3)
        self.directions = {"mae": False, "rmse": False}

    def statistics(self, output: Tensor, target: Tensor) -> Tensor:
        error = output.reshape(-1).double() - target.reshape(-1).double()
        return torch.stack([error.abs().sum(), error.square().sum(), error.new_tensor(error.numel())])

    def compute(self) -> dict[str, float]:
        mean_square = _ratio(self.state[1], self.state[2])
        return {"mae": self.scale * _ratio(self.state[0], self.state[2]), "rmse": self.scale * math.sqrt(mean_square)}


class MultilabelMeter(Meter):
    """L labels per sample from L logits [N, L]; targets 0/1 [N, L] with NaN where a label is unknown.

    Reports what multi-label papers and scikit-learn report: micro- and macro-averaged F1 (per label counts of
    the known entries), Hamming loss (the share of known entries predicted wrong) and subset accuracy (rows
    whose every label is known and right, among the rows whose every label is known)."""

    def __init__(self, num_labels: int) -> None:
        self.num_labels = num_labels
        super().__init__(3 * num_labels + 4)
        self.directions = {"micro_f1": True, "macro_f1": True, "hamming_loss": False, "subset_accuracy": True}

    def statistics(self, output: Tensor, target: Tensor) -> Tensor:
        known = ~torch.isnan(target)
        truth = target.nan_to_num(0.0) > 0.5
        predicted = output > 0
        tp = (predicted & truth & known).sum(0)
        fp = (predicted & ~truth & known).sum(0)
        fn = (~predicted & truth & known).sum(0)
        wrong = (predicted != truth) & known
        complete = known.all(dim=1)
        exact = complete & ~wrong.any(dim=1)
        tail = torch.stack([exact.sum(), complete.sum(), wrong.sum(), known.sum()])
        return torch.cat([tp, fp, fn, tail]).double()

    def compute(self) -> dict[str, float]:
        tp, fp, fn = self.state[: 3 * self.num_labels].view(3, self.num_labels)
        exact, complete, wrong, known = self.state[-4:]
        per_label = 2 * tp + fp + fn
        seen = per_label > 0
        macro = float((2 * tp[seen] / per_label[seen]).mean()) if bool(seen.any()) else math.nan
        return {
            "micro_f1": _ratio(2 * tp.sum(), per_label.sum()),
            "macro_f1": macro,
            "hamming_loss": _ratio(wrong, known),
            "subset_accuracy": _ratio(exact, complete),
        }


class Masked(Meter):
    """Another meter on the samples whose target is known: a NaN target means the row has no label for this
    task, and it counts neither in the statistics nor in the sample count."""

    def __init__(self, inner: Meter) -> None:
        self.inner = inner
        self.state = inner.state
        self.directions = inner.directions

    def reset(self) -> None:
        self.inner.reset()

    def statistics(self, output: Tensor, target: Tensor) -> Tensor:
        known = ~torch.isnan(target.reshape(-1))
        return self.inner.statistics(output[known], target.reshape(-1)[known])

    def compute(self) -> dict[str, float]:
        return self.inner.compute()
