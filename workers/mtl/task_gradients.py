"""Per-task gradients: one vmapped backward over the K losses, or K sequential backwards.

The batched path (``is_grads_batched``) pushes K one-hot output gradients through the graph at
once, sharing the kernel launches and Python overhead of K separate passes. Some operators have
no batching rule; ``auto`` tries the batched path once and falls back for good if it fails.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from workers.mtl.errors import MethodError

GradientMode = Literal["auto", "batched", "sequential"]
GRADIENT_MODES: tuple[GradientMode, ...] = ("auto", "batched", "sequential")


class TaskGradientEngine:
    """Computes d losses[k] / d params for every k, as one [K, *shape] tensor per parameter."""

    def __init__(self, mode: GradientMode = "auto") -> None:
        if mode not in GRADIENT_MODES:
            raise MethodError(f"gradient_mode={mode!r} is not allowed; allowed: {', '.join(GRADIENT_MODES)}")
        self.mode: GradientMode = mode

    def __call__(self, losses: Tensor, params: Sequence[Tensor], *, retain_graph: bool = False) -> list[Tensor]:
        if self.mode == "sequential":
            return sequential_task_gradients(losses, params, retain_graph=retain_graph)
        if self.mode == "batched":
            return batched_task_gradients(losses, params, retain_graph=retain_graph)
        try:
            grads = batched_task_gradients(losses, params, retain_graph=True)
        except (RuntimeError, NotImplementedError) as error:
            warnings.warn(
                f"batched per-task gradients unavailable for this model ({error}); using K sequential backwards",
                RuntimeWarning,
                stacklevel=2,
            )
            self.mode = "sequential"
            return sequential_task_gradients(losses, params, retain_graph=retain_graph)
        self.mode = "batched"
        return grads


def batched_task_gradients(losses: Tensor, params: Sequence[Tensor], *, retain_graph: bool) -> list[Tensor]:
    num_tasks = losses.shape[0]
    basis = torch.eye(num_tasks, dtype=losses.dtype, device=losses.device)
    grads = torch.autograd.grad(
        losses, list(params), grad_outputs=basis, is_grads_batched=True, retain_graph=retain_graph, allow_unused=True
    )
    return [_zeros_if_none(g, p, num_tasks) for g, p in zip(grads, params, strict=True)]


def sequential_task_gradients(losses: Tensor, params: Sequence[Tensor], *, retain_graph: bool) -> list[Tensor]:
    num_tasks = losses.shape[0]
    rows: list[list[Tensor]] = [[] for _ in params]
    for task in range(num_tasks):
        keep = retain_graph or task < num_tasks - 1
        grads = torch.autograd.grad(losses[task], list(params), retain_graph=keep, allow_unused=True)
        for column, (grad, param) in enumerate(zip(grads, params, strict=True)):
            rows[column].append(torch.zeros_like(param) if grad is None else grad)
    return [torch.stack(column) for column in rows]


def _zeros_if_none(grad: Tensor | None, param: Tensor, num_tasks: int) -> Tensor:
    if grad is None:
        return torch.zeros(num_tasks, *param.shape, dtype=param.dtype, device=param.device)
    return grad
