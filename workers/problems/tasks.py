"""Task kinds: what a head outputs, the loss on that output and the meter that scores it.

Output and target conventions (per batch):

=================  ========================  ==================================================
kind               model output              target
=================  ========================  ==================================================
classification     logits [N, C]             class index [N] (int64)
binary             one logit [N, 1]          0/1 [N] (float)
segmentation       logits [N, C, H, W]       class index [N, H, W], -1 = unlabelled
depth              [N, 1, H, W]              [N, 1, H, W], 0 = not measured
normal             [N, 3, H, W] (any norm)   unit normals [N, 3, H, W], (0, 0, 0) = not measured
regression         [N, 1]                    standardised value [N]
=================  ========================  ==================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: N812

from flatmtl.workers.problems import metrics


@dataclass(frozen=True)
class TaskKind:
    """Base of the task kinds; ``dense`` kinds predict a map per pixel, with ``out_channels`` per pixel."""

    dense: ClassVar[bool] = False
    columnwise: ClassVar[bool] = False
    """One output per sample, so tasks of this kind can be scored together by ``column_losses``."""

    @property
    def out_channels(self) -> int:
        return 1

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def column_losses(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """[G] losses of G tasks of this kind from their outputs and targets side by side ([N, G] each)."""
        raise NotImplementedError

    def meter(self) -> metrics.Meter:
        raise NotImplementedError


@dataclass(frozen=True)
class Classification(TaskKind):
    """Multi-class classification with cross-entropy."""

    num_classes: int = 10
    ece_bins: int = metrics.DEFAULT_ECE_BINS

    @property
    def out_channels(self) -> int:
        return self.num_classes

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output, target.long())

    def meter(self) -> metrics.Meter:
        return metrics.ClassificationMeter(self.num_classes, bins=self.ece_bins)


@dataclass(frozen=True)
class Binary(TaskKind):
    """One binary attribute or label, with a logistic loss on a single logit."""

    ece_bins: int = metrics.DEFAULT_ECE_BINS
    columnwise: ClassVar[bool] = True

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(output.reshape(-1), target.reshape(-1).to(output.dtype))

    def column_losses(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(outputs, targets.to(outputs.dtype), reduction="none").mean(0)

    def meter(self) -> metrics.Meter:
        return metrics.ClassificationMeter(2, binary=True, bins=self.ece_bins)


@dataclass(frozen=True)
class Segmentation(TaskKind):
    """Semantic segmentation with pixel-wise cross-entropy that skips unlabelled (-1) pixels."""

    num_classes: int = 13
    dense: ClassVar[bool] = True

    @property
    def out_channels(self) -> int:
        return self.num_classes

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output, target.long(), ignore_index=-1)

    def meter(self) -> metrics.Meter:
        return metrics.SegmentationMeter(self.num_classes)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """The mean of ``values`` where ``mask`` holds (NaN where it never does), as ``values[mask].mean()`` is
    but without boolean indexing, whose output size the host must read back from the device."""
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum()


@dataclass(frozen=True)
class Depth(TaskKind):
    """Depth regression: L1 over the pixels that have a measurement."""

    dense: ClassVar[bool] = True

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return masked_mean((output - target).abs(), metrics.valid_pixels(target))

    def meter(self) -> metrics.Meter:
        return metrics.DepthMeter()


@dataclass(frozen=True)
class Normal(TaskKind):
    """Surface normals: 1 - cosine similarity of the normalised prediction, over pixels with a normal."""

    dense: ClassVar[bool] = True

    @property
    def out_channels(self) -> int:
        return 3

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        cosine = (F.normalize(output, dim=1) * target).sum(dim=1)
        return 1 - masked_mean(cosine, metrics.valid_pixels(target).squeeze(1))

    def meter(self) -> metrics.Meter:
        return metrics.NormalMeter()


@dataclass(frozen=True)
class Regression(TaskKind):
    """Scalar regression on a standardised target (MSE); MAE is reported in original units via ``scale``."""

    scale: float = 1.0
    columnwise: ClassVar[bool] = True

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(output.reshape(-1), target.reshape(-1).to(output.dtype))

    def column_losses(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.mse_loss(outputs, targets.to(outputs.dtype), reduction="none").mean(0)

    def meter(self) -> metrics.Meter:
        return metrics.RegressionMeter(self.scale)


@dataclass(frozen=True)
class Task:
    """A named task of a problem."""

    name: str
    kind: TaskKind


def stack_losses(tasks: list[Task], outputs: list[Tensor], targets: list[Tensor]) -> Tensor:
    """The K per-task losses as one vector, in task order.

    Tasks of one column-wise kind (binary labels, scalar regressions) are scored in one call over their
    outputs side by side rather than one call each: with many such tasks (Yeast's 14, CelebA's 40) the
    per-call cost would otherwise dominate a forward pass, and SAMO runs 2K forward passes per step.
    """
    if len(outputs) != len(tasks) or len(targets) != len(tasks):
        raise ValueError(f"{len(tasks)} tasks, {len(outputs)} outputs, {len(targets)} targets: one each per task")
    groups: dict[tuple[TaskKind, int], list[int]] = {}  # one group per kind and batch size (multi-input)
    for index, task in enumerate(tasks):
        numel = outputs[index].numel()
        if task.kind.columnwise and numel == targets[index].numel():
            groups.setdefault((task.kind, numel), []).append(index)
    losses: list[Tensor | None] = [None] * len(tasks)
    for (kind, _), members in groups.items():
        columns = kind.column_losses(
            torch.stack([outputs[i].reshape(-1) for i in members], dim=1),
            torch.stack([targets[i].reshape(-1) for i in members], dim=1),
        )
        if len(members) == len(tasks):
            return columns
        for index, loss in zip(members, columns.unbind(), strict=True):
            losses[index] = loss
    return torch.stack([
        task.kind.loss(out, tgt) if loss is None else loss
        for task, out, tgt, loss in zip(tasks, outputs, targets, losses, strict=True)
    ])  # fmt: skip
