"""Aligned-MTL: align the principal components of the task gradients (Senushkin et al., 2023)."""

from __future__ import annotations

import torch
from torch import Tensor

from flatmtl.workers.mtl.aggregators._gram import as_output, rank_tolerance, to_float64
from flatmtl.workers.mtl.base import GramAggregator
from flatmtl.workers.mtl.registry import HParam, register

SCALES = ("min", "median", "rmse")


def alignment_matrix(matrix: Tensor, dtype: torch.dtype, scale: str) -> Tensor:
    """``B`` with ``B G`` the aligned gradients: ``B = s V_r L_r^{-1/2} V_r^T`` from ``M = V L V^T``.

    ``(B G)(B G)^T = s^2 V_r V_r^T``: every nonzero singular value of the aligned matrix equals ``s``
    (condition number 1). Eigenvalues at or below the rank tolerance (K eps of the Gram's own dtype)
    are dropped, which handles rank deficiency. ``s`` is the smallest kept singular value (``min``,
    the paper's choice), their median, or their root mean square.
    """
    eigenvalues, vectors = torch.linalg.eigh(matrix)
    kept = eigenvalues > rank_tolerance(eigenvalues, dtype)
    if not kept.any():
        return torch.zeros_like(matrix)
    eigenvalues, vectors = eigenvalues[kept], vectors[:, kept]
    singular_values = eigenvalues.sqrt()
    if scale == "min":
        target = singular_values.min()
    elif scale == "median":
        target = singular_values.quantile(0.5)
    else:
        target = eigenvalues.mean().sqrt()
    return target * (vectors / singular_values) @ vectors.T


@register(
    "aggregator",
    "aligned_mtl",
    description="Rescale the task gradients' principal components to one singular value (condition number 1), "
    "then sum.",
    paper="Senushkin, Patakin, Kuznetsov & Konushin, Independent Component Alignment for Multi-Task Learning, "
    "CVPR 2023",
    scale="sum: the aligned gradients are summed with task weights 1 (authors' code), so K orthogonal gradients "
    "of equal norm give their sum",
    hparams=(
        HParam(
            "scale",
            str,
            "min",
            "common singular value of the aligned gradients: the smallest (paper), the median or the RMS",
            choices=SCALES,
        ),
    ),
)
class AlignedMTL(GramAggregator):
    """Update ``1^T B G``: the sum of the aligned task gradients, weights ``B 1``.

    Scale: sum with unit task weights, as in the authors' code (``B.sum(0)``); with the default ``min``
    the aligned components are shrunk to the smallest singular value, never stretched.
    """

    def __init__(self, scale: str = "min") -> None:
        self.scale = scale

    def compute_weights(self, gram: Tensor, *, losses: Tensor | None, generator: torch.Generator | None) -> Tensor:
        transform = alignment_matrix(to_float64(gram), gram.dtype, self.scale)
        return as_output(transform.sum(dim=0), gram)
