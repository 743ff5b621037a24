"""What the sharpness-aware wrappers share: SAM's ascent offsets and per-task gradients at per-task points.

The ascent is computed at the unperturbed parameters (ASAM's scales are read once, before any move);
norms over the shared parameters go through the oracle, so they are global sums on sharded runs.
Heads are whole on every rank and their norms are plain local sums.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor

from flatmtl.workers.mtl.oracle import GradientOracle
from flatmtl.workers.mtl.registry import HParam

RHO = HParam("rho", float, 0.05, "perturbation radius (ASAM typically uses ~1-2)", low=0.0)
ADAPTIVE = HParam("adaptive", bool, False, "ASAM: scale the neighbourhood by |theta| + eta")
ETA = HParam("eta", float, 0.01, "ASAM's offset added to |theta|", low=0.0)

TINY = 1e-12
"""Added to every norm we divide by, so a zero gradient gives a zero offset rather than NaN."""


class Ascent:
    """SAM's worst-case offsets ``rho * T^2 v / ||T v||`` for directions v at the current parameters.

    ``T`` is ``diag(|theta| + eta)`` for ASAM (read when this object is built, so build it before moving
    the parameters) and the identity otherwise. The norm is taken jointly over the blocks passed in one
    call: shared parameters and/or some heads.
    """

    def __init__(self, oracle: GradientOracle, rho: float, adaptive: bool, eta: float) -> None:
        self.oracle = oracle
        self.rho = rho
        self.shared_scale = oracle.shared.values().abs().add_(eta) if adaptive else None
        self.head_scales = [head.values().abs().add_(eta) for head in oracle.heads] if adaptive else None

    def __call__(self, shared: Tensor | None, heads: Mapping[int, Tensor]) -> tuple[Tensor | None, dict[int, Tensor]]:
        scaled_shared = None if shared is None else _scaled(shared, self.shared_scale)
        scaled_heads = {task: _scaled(h, self._head_scale(task)) for task, h in heads.items()}
        squared = head_sq_norm(scaled_heads.values())
        if scaled_shared is not None:
            squared = self.oracle.norm(scaled_shared).pow(2) + squared
        factor = self.rho / (squared.sqrt() + TINY)
        offset_shared = None if scaled_shared is None else _scaled(scaled_shared, self.shared_scale) * factor
        offset_heads = {task: _scaled(h, self._head_scale(task)) * factor for task, h in scaled_heads.items()}
        return offset_shared, offset_heads

    def _head_scale(self, task: int) -> Tensor | None:
        return None if self.head_scales is None else self.head_scales[task]


def head_sq_norm(heads: Iterable[Tensor]) -> Tensor:
    """Sum of squared entries of some head vectors (heads are whole on every rank)."""
    return sum((head.pow(2).sum() for head in heads), torch.zeros(()))


def _scaled(vector: Tensor, scale: Tensor | None) -> Tensor:
    return vector if scale is None else vector * scale


def task_point_gradients(
    oracle: GradientOracle,
    offsets: Callable[[int], tuple[Tensor | None, Tensor | None]],
    store: Callable[[int, Tensor], None],
) -> list[Tensor]:
    """Each task's gradient at its own point ``theta + offsets(task)``: K forwards of that task alone
    (``GradientOracle.task_gradient_alone``) and K single-task backwards.

    ``store(task, shared)`` takes each task's shared gradient [P] as it comes, into a row of a buffer the
    caller already holds (no second [K, P]); each task's head gradient is returned. Offsets are asked for one
    task at a time, so at most one offset vector is alive, before that task's ``store``: ``offsets(task)``
    may read what ``store(task, ...)`` overwrites. They must not read the parameters (which are moved).
    """
    heads = []
    with oracle.displaced() as move:
        for task in range(oracle.num_tasks):
            offset_shared, offset_head = offsets(task)
            move(offset_shared, {} if offset_head is None else {task: offset_head})
            del offset_shared, offset_head
            shared, head = oracle.task_gradient_alone(task)
            store(task, shared)
            heads.append(head)
    return heads
