"""PCGrad (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020), as K x K algebra."""

from __future__ import annotations

import torch
from torch import Tensor

from flatmtl.workers.mtl.base import GramAggregator
from flatmtl.workers.mtl.registry import register


def random_order(others: list[int], generator: torch.Generator) -> list[int]:
    """``others`` in an order drawn from ``generator`` (one permutation per call)."""
    perm = torch.randperm(len(others), generator=generator, device=generator.device).tolist()
    return [others[p] for p in perm]


def pcgrad_coefficients(gram: Tensor, generator: torch.Generator) -> Tensor:
    """C [K, K] with projected g_i' = C[i] @ G, computed from the Gram matrix alone (float64, CPU).

    For each task i and each other task j in a fresh random order, if g_i' . g_j < 0 the component
    of g_i' along the *original* g_j is removed: c_i <- c_i - (c_i . gram[:, j] / gram[j, j]) e_j.
    """
    num_tasks = gram.shape[0]
    coefficients = torch.eye(num_tasks, dtype=torch.float64)
    for i in range(num_tasks):
        for j in random_order([j for j in range(num_tasks) if j != i], generator):
            inner = float(coefficients[i] @ gram[:, j])
            if inner < 0.0:  # implies gram[j, j] > 0
                coefficients[i, j] -= inner / float(gram[j, j])
    return coefficients


@register(
    "aggregator",
    "pcgrad",
    description="Project each task gradient off the other tasks' gradients it conflicts with (random order).",
    paper="Yu et al. 2020, Gradient Surgery for Multi-Task Learning (NeurIPS)",
    scale="sum: the projected gradients are summed, as in the paper (non-conflicting gradients give their sum)",
)
class PCGrad(GramAggregator):
    """Update = sum_i g_i', the sum of the projected gradients (the paper's convention, K x the mean).

    Each projected g_i' is tracked as coefficients over the original rows, so the weights come from
    the Gram matrix alone and the method shards with a K x K all-reduce. The order of the other tasks
    is drawn per task and per step from ``generator`` (without one, from the method's own generator
    seeded 0 at construction), so every rank with the same seed projects identically.
    """

    def __init__(self) -> None:
        self._default_generator = torch.Generator().manual_seed(0)

    def coefficients(self, gram: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The projected gradients as C [K, K] over the original rows (g_i' = C[i] @ G)."""
        generator = generator if generator is not None else self._default_generator
        return pcgrad_coefficients(gram.detach().to("cpu", torch.float64), generator)

    def compute_weights(self, gram: Tensor, *, losses: Tensor | None, generator: torch.Generator | None) -> Tensor:
        return self.coefficients(gram, generator).sum(dim=0).to(device=gram.device, dtype=gram.dtype)
