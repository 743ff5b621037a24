"""Input checks shared by every method, so bad tensors fail with the same clear message everywhere."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flatmtl.workers.mtl.errors import MethodError


def check_task_matrix(method: str, grads: Tensor) -> None:
    """A [K, P] per-task gradient matrix with K >= 1.

    Its finiteness is checked on what the method computes from it anyway (``check_finite_through``), so
    no extra pass over [K, P] is made."""
    if grads.dim() != 2 or grads.shape[0] < 1:
        raise MethodError(f"{method}: gradients must be a [K, P] matrix with K >= 1, got shape {tuple(grads.shape)}")


def check_finite_through(method: str, witness: Tensor, grads: Tensor, what: str = "gram") -> None:
    """Raise if ``witness``, computed from ``grads``, is not finite, naming the first bad entry of ``grads``.

    A NaN or inf anywhere in [K, P] reaches the Gram's diagonal (``sum_p g_kp^2``) and any linear
    combination of the rows (``0 * inf`` is NaN), so checking the K x K Gram or the [P] update costs
    nothing next to the method; the [K, P] matrix is searched only to name the culprit. When ``grads``
    is one shard and the bad entry lives on another rank, the witness itself is named."""
    if math.isfinite(float(witness.sum())):
        return
    check_finite(method, "gradients", grads)
    check_finite(method, what, witness)


def check_gram(method: str, gram: Tensor) -> None:
    """A square K x K Gram matrix with finite entries."""
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] < 1:
        raise MethodError(f"{method}: gram must be a square [K, K] matrix, got shape {tuple(gram.shape)}")
    check_finite(method, "gram", gram)


def check_losses(method: str, losses: Tensor | None, num_tasks: int, *, required: bool = False) -> None:
    """Per-task losses, when given, must be K numbers, and finite where the method reads them (``required``):
    losses a method ignores cannot reach its update, and a step checks every loss once anyway."""
    if losses is None:
        if required:
            raise MethodError(f"{method}: needs the K per-task losses, got none")
        return
    if losses.dim() != 1 or losses.shape[0] != num_tasks:
        raise MethodError(f"{method}: losses must have shape [{num_tasks}] (one per task), got {tuple(losses.shape)}")
    if required:
        check_finite(method, "losses", losses)


def check_finite(method: str, what: str, tensor: Tensor) -> None:
    if math.isfinite(float(tensor.sum())):  # one reduction; a sum that overflows falls through to the exact test
        return
    if not torch.isfinite(tensor).all():
        bad = (~torch.isfinite(tensor)).nonzero()[0].tolist()
        raise MethodError(f"{method}: {what} contain NaN or inf (first at index {bad}); allowed: finite values")


def check_num_tasks(method: str, expected: int, got: int) -> None:
    if expected != got:
        raise MethodError(f"{method}: built for K={expected} tasks, got K={got}")
