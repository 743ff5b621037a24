"""Task kinds of tables, where a row may lack some labels: a NaN target leaves the row out of that task's loss
and metrics. A batch without any missing target takes the plain kind's path, so a complete table trains exactly
as the same data in memory; a batch with none of a task's labels gives that task a zero loss (no gradient)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: N812

from flatmtl.workers.problems import metrics
from flatmtl.workers.problems.tasks import Binary, Classification, Regression, TaskKind


def _masked_mean(values: Tensor, known: Tensor) -> Tensor:
    """Mean of ``values`` over ``known`` entries along the batch (dim 0); 0 where none is known."""
    known = known.to(values.dtype)
    return (values * known).sum(0) / known.sum(0).clamp_min(1)


class _UnknownTargets:
    """Column kinds whose targets may be NaN: a column's loss is the mean of its known rows' terms. The single
    task's ``loss`` is its one column, so one task scores exactly as a group of them."""

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return self.column_losses(output.reshape(-1, 1), target.reshape(-1, 1))[0]

    def column_losses(self, outputs: Tensor, targets: Tensor) -> Tensor:
        known = ~torch.isnan(targets)
        if bool(known.all()):
            return super().column_losses(outputs, targets)
        return _masked_mean(self.row_losses(outputs, targets.nan_to_num(0.0).to(outputs.dtype)), known)

    def row_losses(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """[N, G] loss terms of each row and column, the unknown targets filled in with 0."""
        raise NotImplementedError


@dataclass(frozen=True)
class TableBinary(_UnknownTargets, Binary):
    """Binary label (0/1, NaN unknown); reports accuracy, F1, calibration and ROC-AUC."""

    def row_losses(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(outputs, targets, reduction="none")

    def meter(self) -> metrics.Meter:
        return metrics.Masked(metrics.BinaryMeter(bins=self.ece_bins))


@dataclass(frozen=True)
class TableMulticlass(Classification):
    """One class index per row (NaN unknown); reports accuracy, macro-F1 and calibration."""

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        known = ~torch.isnan(target)
        if bool(known.all()):
            return super().loss(output, target)
        if not bool(known.any()):
            return output.sum() * 0.0
        return F.cross_entropy(output[known], target[known].long())

    def meter(self) -> metrics.Meter:
        return metrics.Masked(metrics.MulticlassMeter(self.num_classes, bins=self.ece_bins))


@dataclass(frozen=True)
class TableRegression(_UnknownTargets, Regression):
    """A standardised scalar (NaN unknown); MAE and RMSE are reported in the column's own units."""

    def row_losses(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.mse_loss(outputs, targets, reduction="none")

    def meter(self) -> metrics.Meter:
        return metrics.Masked(metrics.RegressionErrorMeter(self.scale))


@dataclass(frozen=True)
class Multilabel(TaskKind):
    """L binary labels per row from L logits; targets [N, L] of 0/1, NaN where a label is unknown."""

    num_labels: int = 2

    @property
    def out_channels(self) -> int:
        return self.num_labels

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        known = ~torch.isnan(target)
        terms = F.binary_cross_entropy_with_logits(output, target.nan_to_num(0.0).to(output.dtype), reduction="none")
        known_count = known.sum()
        return (terms * known).sum() / known_count.clamp_min(1)

    def meter(self) -> metrics.Meter:
        return metrics.MultilabelMeter(self.num_labels)
