"""Gradient-conflict diagnostics for logs and metrics.

Everything pairwise comes from the K x K Gram matrix the step already computed (``StepRecord.gram``),
so it costs no extra backward and is the same on every rank, sharded or not. Definitions follow
Yu et al. 2020 (PCGrad) as used by Elich et al. ("Challenging common assumptions in multi-task
learning"): two task gradients conflict when their inner product is negative, and their magnitude
similarity is ``2|g||g'| / (|g|^2 + |g'|^2)``, which is 1 for equal norms and tends to 0 as they part.

The share of conflicting parameters needs the [K, P] gradients themselves. It is built from counts,
so shards (or ranks holding disjoint slices) combine by summing: pass ``comm.shard_sum`` as the
reducer, or add two ``ParameterConflicts`` together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from flatmtl.workers.mtl.checks import check_finite, check_gram, check_task_matrix

NAME = "diagnostics"

CountReducer = Callable[[Tensor], Tensor]
"""Sums a tensor of shard-local counts over shards (identity when the gradients are whole)."""


def _identity(counts: Tensor) -> Tensor:
    return counts


def task_norms(gram: Tensor) -> Tensor:
    """Per-task gradient norms [K]: the square roots of the Gram diagonal (clamped at 0 against round-off)."""
    check_gram(NAME, gram)
    return gram.diagonal().clamp(min=0).sqrt()


def cosine_matrix(gram: Tensor) -> Tensor:
    """Pairwise cosine similarities [K, K]. A zero gradient has no direction: its cosine with any
    gradient (itself included) is 0, so it counts as neither aligned nor conflicting."""
    norms = task_norms(gram)
    scale = norms[:, None] * norms[None, :]
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    cosines = torch.where(scale > 0, gram / safe, torch.zeros_like(gram))
    return cosines.clamp(-1.0, 1.0)


def magnitude_similarity_matrix(gram: Tensor) -> Tensor:
    """Pairwise ``2|g_i||g_j| / (|g_i|^2 + |g_j|^2)`` [K, K]; two zero gradients have equal norms, so 1."""
    norms = task_norms(gram)
    squared = norms.pow(2)
    denominator = squared[:, None] + squared[None, :]
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    similarity = 2 * norms[:, None] * norms[None, :] / safe
    return torch.where(denominator > 0, similarity, torch.ones_like(similarity)).clamp(0.0, 1.0)


def _pairs(num_tasks: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Row and column indices of the unordered pairs i < j."""
    return torch.triu_indices(num_tasks, num_tasks, offset=1, device=device).unbind(0)


def conflict_ratio(gram: Tensor) -> float:
    """Share of the K(K-1)/2 task pairs whose gradients have a negative inner product (0 for K = 1)."""
    check_gram(NAME, gram)
    rows, cols = _pairs(gram.shape[0], gram.device)
    if rows.numel() == 0:
        return 0.0
    return float((gram[rows, cols] < 0).double().mean())


@dataclass(frozen=True)
class ConflictSummary:
    """A step's gradient geometry in plain floats.

    With fewer than two tasks there are no pairs: cosines and magnitude similarity are reported as 1
    (nothing disagrees) and the conflict ratio as 0.
    """

    conflict_ratio: float
    cosine_min: float
    cosine_mean: float
    magnitude_similarity_mean: float
    norms: tuple[float, ...]

    def as_dict(self) -> dict[str, float]:
        """Flat ``name -> float`` for loggers; norms become ``grad_norm_<task>``."""
        flat = {
            "conflict_ratio": self.conflict_ratio,
            "cosine_min": self.cosine_min,
            "cosine_mean": self.cosine_mean,
            "magnitude_similarity_mean": self.magnitude_similarity_mean,
        }
        flat.update({f"grad_norm_{task}": norm for task, norm in enumerate(self.norms)})
        return flat


def summarize(gram: Tensor) -> ConflictSummary:
    """Conflict ratio, min and mean pairwise cosine, mean magnitude similarity and norms from one Gram."""
    check_gram(NAME, gram)
    gram = gram.detach().double()
    rows, cols = _pairs(gram.shape[0], gram.device)
    norms = tuple(float(n) for n in task_norms(gram))
    if rows.numel() == 0:
        return ConflictSummary(0.0, 1.0, 1.0, 1.0, norms)
    cosines = cosine_matrix(gram)[rows, cols]
    magnitudes = magnitude_similarity_matrix(gram)[rows, cols]
    return ConflictSummary(
        conflict_ratio=conflict_ratio(gram),
        cosine_min=float(cosines.min()),
        cosine_mean=float(cosines.mean()),
        magnitude_similarity_mean=float(magnitudes.mean()),
        norms=norms,
    )


@dataclass(frozen=True)
class ParameterConflicts:
    """Counts of gradient coordinates whose signs disagree between tasks.

    ``conflicting`` counts coordinates where at least one task's gradient is strictly positive and
    another's strictly negative (for K = 2 exactly the coordinates with ``g_1 g_2 < 0``; zeros take
    no side). ``pairwise[i, j]`` counts coordinates with ``g_i g_j < 0``. ``total`` is the number of
    coordinates counted. All are integers, so shards combine by addition.
    """

    conflicting: int
    pairwise: Tensor
    total: int

    @property
    def share(self) -> float:
        """Share of coordinates in conflict (0 when no coordinates were counted)."""
        return self.conflicting / self.total if self.total else 0.0

    def pairwise_share(self) -> Tensor:
        """Per task pair, the share of coordinates where the two gradients have opposite signs [K, K]."""
        return (
            self.pairwise.double() / self.total if self.total else torch.zeros_like(self.pairwise, dtype=torch.float64)
        )

    def __add__(self, other: ParameterConflicts) -> ParameterConflicts:
        return ParameterConflicts(
            self.conflicting + other.conflicting, self.pairwise + other.pairwise, self.total + other.total
        )


def parameter_conflicts(grads: Tensor, reduce_counts: CountReducer = _identity) -> ParameterConflicts:
    """Sign-disagreement counts of a [K, P] gradient matrix, or of this rank's shard of it.

    ``reduce_counts`` sums the packed counts over shards in one collective (``comm.shard_sum``). Pairs
    are counted one at a time so the only temporaries are [P] masks, never a [K, P] float matrix.
    """
    check_task_matrix(NAME, grads)
    check_finite(NAME, "gradients", grads)
    num_tasks = grads.shape[0]
    positive = grads > 0
    negative = grads < 0
    conflicting = (positive.any(dim=0) & negative.any(dim=0)).sum()
    pairwise = torch.zeros(num_tasks, num_tasks, dtype=torch.int64, device=grads.device)
    for i in range(num_tasks):
        for j in range(i + 1, num_tasks):
            opposite = ((positive[i] & negative[j]) | (negative[i] & positive[j])).sum()
            pairwise[i, j] = pairwise[j, i] = opposite
    total = torch.tensor([grads.shape[1]], dtype=torch.int64, device=grads.device)
    packed = reduce_counts(torch.cat([conflicting.reshape(1), pairwise.reshape(-1), total]))
    return ParameterConflicts(
        conflicting=int(packed[0]),
        pairwise=packed[1 : 1 + num_tasks * num_tasks].reshape(num_tasks, num_tasks).cpu(),
        total=int(packed[-1]),
    )
