"""Gram plumbing shared by the Gram-based aggregators: float64 on the CPU in, the caller's dtype out.

The K x K problems are tiny, so they are solved on the CPU in float64 whatever device and dtype the
Gram comes in; only the K weights travel back.
"""

from __future__ import annotations

import torch
from torch import Tensor

ZERO_GRADIENT_RATIO = 1e-24
"""A task whose squared gradient norm is below this fraction of the largest one counts as a zero gradient."""


def to_float64(gram: Tensor) -> Tensor:
    """The Gram as a symmetric float64 CPU matrix (symmetrized: shard sums can break symmetry by rounding)."""
    matrix = gram.detach().to(device="cpu", dtype=torch.float64)
    return 0.5 * (matrix + matrix.T)


def as_output(weights: Tensor, gram: Tensor) -> Tensor:
    """The weights on the Gram's device, in its dtype."""
    return weights.to(device=gram.device, dtype=gram.dtype)


def pair_entries(gram: Tensor) -> tuple[float, float, float]:
    """A 2 x 2 Gram as Python floats: the squared norms ``a``, ``b`` and the (symmetrized) inner product ``c``.

    Two tasks have closed forms in these three numbers; one host read and float arithmetic cost less than
    the K x K tensor algebra, whose every small operation is a dispatch."""
    (a, first), (second, b) = gram.detach().tolist()
    return a, b, 0.5 * (first + second)


def pair_output(first: float, second: float, gram: Tensor) -> Tensor:
    """Two weights on the Gram's device, in its dtype."""
    return torch.tensor([first, second], dtype=gram.dtype, device=gram.device)


def zero_gradient(squared_norm: float, largest: float) -> bool:
    """Whether a task's gradient counts as zero next to the largest one (see ``nonzero_tasks``)."""
    return not squared_norm > ZERO_GRADIENT_RATIO * largest


def normalized(matrix: Tensor) -> tuple[Tensor, float]:
    """The Gram divided by its largest diagonal entry (the largest squared gradient norm), and that scale.

    Scale-invariant problems (MGDA, UPGrad, CAGrad's direction) are solved on this matrix so their
    absolute tolerances mean the same thing for tiny and huge gradients. The scale is 0 when every
    gradient is zero; the matrix is then returned unchanged.
    """
    scale = float(matrix.diagonal().max())
    if scale <= 0.0:
        return matrix, 0.0
    return matrix / scale, scale


def nonzero_tasks(matrix: Tensor) -> Tensor:
    """Boolean mask of the tasks whose gradient is not (numerically) zero."""
    diagonal = matrix.diagonal()
    return diagonal > ZERO_GRADIENT_RATIO * float(diagonal.max())


def rank_tolerance(eigenvalues: Tensor, dtype: torch.dtype) -> float:
    """Eigenvalues of the Gram at or below this are numerical zeros: K * eps(input dtype) * largest one.

    The Gram carries the rounding of the precision it was computed in, so the tolerance follows that
    precision, not float64's.
    """
    eps = torch.finfo(dtype if dtype.is_floating_point else torch.float64).eps
    return float(eigenvalues.max().clamp_min(0.0)) * eigenvalues.numel() * eps


def symmetric_lstsq(matrix: Tensor, rhs: Tensor, rcond: float) -> Tensor:
    """Minimum-norm least-squares solution of ``matrix @ x = rhs`` for a symmetric (possibly indefinite
    or singular) matrix, through its eigendecomposition: eigenvalues within ``rcond`` of the largest
    in magnitude count as zero. Much faster than an SVD-based ``lstsq`` on the CPU for K x K systems."""
    eigenvalues, vectors = torch.linalg.eigh(matrix)
    cutoff = rcond * float(eigenvalues.abs().max())
    kept = eigenvalues.abs() > cutoff
    inverse = torch.where(kept, 1.0 / torch.where(kept, eigenvalues, torch.ones_like(eigenvalues)), 0.0)
    return vectors @ (inverse.unsqueeze(-1) * (vectors.T @ rhs))
