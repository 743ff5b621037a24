"""Per-task gradients: one vmapped backward over the K losses (or over the trunk, see ``trunk``), or K
sequential backwards.

The batched path (``is_grads_batched``) pushes K one-hot output gradients through the graph at
once, sharing the kernel launches and Python overhead of K separate passes. Some operators have
no batching rule; ``auto`` tries the batched path once and falls back for good if it fails. From a
trunk of linear layers and activations, both batched modes skip autograd for batched matrix products
(``flatmtl.workers.mtl.linear_trunk``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from flatmtl.workers.mtl import linear_trunk
from flatmtl.workers.mtl.errors import MethodError
from flatmtl.workers.mtl.flat import FlatParams

GradientMode = Literal["auto", "batched", "sequential"]
GRADIENT_MODES: tuple[GradientMode, ...] = ("auto", "batched", "sequential")


class TaskGradientEngine:
    """Computes d losses[k] / d params for every k, as one [K, *shape] tensor per parameter.

    ``linear_trunk`` (on by default; off measures the vmapped backward alone): in the batched modes,
    ``flat_backward`` from a trunk of linear layers and activations takes ``flatmtl.workers.mtl.linear_trunk``.
    """

    def __init__(self, mode: GradientMode = "auto") -> None:
        if mode not in GRADIENT_MODES:
            raise MethodError(f"gradient_mode={mode!r} is not allowed; allowed: {', '.join(GRADIENT_MODES)}")
        self.mode: GradientMode = mode
        self.linear_trunk = True

    def __call__(self, losses: Tensor, params: Sequence[Tensor], *, retain_graph: bool = False) -> list[Tensor]:
        return self.backward([losses], [_basis(losses)], params, retain_graph=retain_graph)

    def backward(
        self, outputs: Sequence[Tensor], rows: Sequence[Tensor], params: Sequence[Tensor], *, retain_graph: bool = False
    ) -> list[Tensor]:
        """Row r of the result is the gradient of ``sum_j <outputs[j], rows[j][r]>`` w.r.t. each parameter."""
        if self.mode == "sequential":
            return sequential_backward(outputs, rows, params, retain_graph=retain_graph)
        if self.mode == "batched":
            return batched_backward(outputs, rows, params, retain_graph=retain_graph)
        try:
            grads = batched_backward(outputs, rows, params, retain_graph=True)
        except (RuntimeError, NotImplementedError) as error:
            warnings.warn(
                f"batched per-task gradients unavailable for this model ({error}); using K sequential backwards",
                RuntimeWarning,
                stacklevel=2,
            )
            self.mode = "sequential"
            return sequential_backward(outputs, rows, params, retain_graph=retain_graph)
        self.mode = "batched"
        return grads

    def flat_backward(
        self, outputs: Sequence[Tensor], rows: Sequence[Tensor], params: FlatParams, *, retain_graph: bool = False
    ) -> Tensor:
        """``backward`` as one [K, P] matrix: batched matrix products where ``outputs`` is one tensor
        computed by linear layers and activations from the data, else ``backward`` and a concatenation."""
        if self.linear_trunk and self.mode != "sequential" and len(outputs) == 1:
            plan = linear_trunk.plan(outputs[0], params)
            if plan is not None:
                return linear_trunk.task_gradients(plan, rows[0], params)
        grads = self.backward(outputs, rows, params.params, retain_graph=retain_graph)
        return params.flatten_batched(grads, rows[0].shape[0])


def batched_backward(
    outputs: Sequence[Tensor], rows: Sequence[Tensor], params: Sequence[Tensor], *, retain_graph: bool
) -> list[Tensor]:
    num_rows = rows[0].shape[0]
    grads = torch.autograd.grad(
        list(outputs),
        list(params),
        grad_outputs=list(rows),
        is_grads_batched=True,
        retain_graph=retain_graph,
        allow_unused=True,
    )
    return [_zeros_if_none(g, p, num_rows) for g, p in zip(grads, params, strict=True)]


def sequential_backward(
    outputs: Sequence[Tensor], rows: Sequence[Tensor], params: Sequence[Tensor], *, retain_graph: bool
) -> list[Tensor]:
    num_rows = rows[0].shape[0]
    columns: list[list[Tensor]] = [[] for _ in params]
    for row in range(num_rows):
        keep = retain_graph or row < num_rows - 1
        grads = torch.autograd.grad(
            list(outputs), list(params), grad_outputs=[r[row] for r in rows], retain_graph=keep, allow_unused=True
        )
        for column, (grad, param) in enumerate(zip(grads, params, strict=True)):
            columns[column].append(torch.zeros_like(param) if grad is None else grad)
    return [torch.stack(column) for column in columns]


def _basis(losses: Tensor) -> Tensor:
    return torch.eye(losses.shape[0], dtype=losses.dtype, device=losses.device)


def _zeros_if_none(grad: Tensor | None, param: Tensor, num_rows: int) -> Tensor:
    if grad is None:
        return torch.zeros(num_rows, *param.shape, dtype=param.dtype, device=param.device)
    return grad
