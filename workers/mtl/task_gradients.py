"""Per-task gradients: one vmapped backward over the K losses (or over the trunk, see ``trunk``), or K
sequential backwards.

The batched path (``is_grads_batched``) pushes K one-hot output gradients through the graph at
once, sharing the kernel launches and Python overhead of K separate passes; on convolutions at small K
the K sequential passes can still be faster. ``auto`` chooses by measuring: its first call takes the
batched path (warming it up), its second times both paths on the same gradients and keeps the faster
for good (``choice``); an operator with no batching rule makes it fall back to sequential at once, and running
out of CUDA memory takes the sequential path for that call (for good after a few). From
a trunk of linear layers and activations, both batched modes skip autograd for batched matrix products
(``flatmtl.workers.mtl.linear_trunk``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

import torch
from torch import Tensor

from flatmtl.workers.mtl import linear_trunk
from flatmtl.workers.mtl.errors import MethodError
from flatmtl.workers.mtl.flat import FlatParams

_Result = TypeVar("_Result")

GradientMode = Literal["auto", "batched", "sequential"]
GRADIENT_MODES: tuple[GradientMode, ...] = ("auto", "batched", "sequential")
OUT_OF_MEMORY_LIMIT = 3
"""``auto`` settles on sequential backwards after this many out-of-memory failures of the batched one."""


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
        self.choice: dict[str, float] = {}
        """What ``auto`` measured when it chose: seconds of each path on one call, and 1.0 for batched."""
        self._auto_calls = 0
        self._out_of_memory = 0

    def state_dict(self) -> dict[str, object]:
        """Where ``auto`` stands (the mode it chose, or how many calls it has made), so that a resumed run
        takes the same path at every step as one that never stopped."""
        return {"mode": self.mode, "auto_calls": self._auto_calls}

    def load_state_dict(self, state: dict[str, object]) -> None:
        mode = state["mode"]
        if mode not in GRADIENT_MODES:
            raise MethodError(f"gradient_mode={mode!r} is not allowed; allowed: {', '.join(GRADIENT_MODES)}")
        self.mode = mode  # type: ignore[assignment]
        self._auto_calls = int(state["auto_calls"])  # type: ignore[call-overload]

    def __call__(self, losses: Tensor, params: Sequence[Tensor], *, retain_graph: bool = False) -> list[Tensor]:
        return self.backward([losses], [_basis(losses)], params, retain_graph=retain_graph)

    def backward(
        self, outputs: Sequence[Tensor], rows: Sequence[Tensor], params: Sequence[Tensor], *, retain_graph: bool = False
    ) -> list[Tensor]:
        """Row r of the result is the gradient of ``sum_j <outputs[j], rows[j][r]>`` w.r.t. each parameter."""
        return self._run(
            lambda keep: batched_backward(outputs, rows, params, retain_graph=keep),
            lambda keep: sequential_backward(outputs, rows, params, retain_graph=keep),
            retain_graph,
        )

    def flat_backward(
        self, outputs: Sequence[Tensor], rows: Sequence[Tensor], params: FlatParams, *, retain_graph: bool = False
    ) -> Tensor:
        """``backward`` as one [K, P] matrix: batched matrix products where ``outputs`` is one tensor
        computed by linear layers and activations from the data, else ``backward`` and a concatenation."""
        num_rows = rows[0].shape[0]
        plan = None
        if self.linear_trunk and self.mode != "sequential" and len(outputs) == 1:
            plan = linear_trunk.plan(outputs[0], params)

        def batched(keep: bool) -> Tensor:
            if plan is not None:
                return linear_trunk.task_gradients(plan, rows[0], params)
            return params.flatten_batched(batched_backward(outputs, rows, params.params, retain_graph=keep), num_rows)

        def sequential(keep: bool) -> Tensor:
            return params.flatten_batched(
                sequential_backward(outputs, rows, params.params, retain_graph=keep), num_rows
            )

        return self._run(batched, sequential, retain_graph)

    def _run(
        self, batched: Callable[[bool], _Result], sequential: Callable[[bool], _Result], retain_graph: bool
    ) -> _Result:
        if self.mode == "sequential":
            return sequential(retain_graph)
        if self.mode == "batched":
            return batched(retain_graph)
        self._auto_calls += 1
        try:
            started = _settled_clock()
            result = batched(True)
            batched_seconds = _settled_clock() - started
        except torch.OutOfMemoryError:
            # K gradients at once did not fit this time; K sequential ones may, and a later step may fit again
            # (memory is fragmented differently, batches vary): only a repeat failure settles on sequential.
            self._out_of_memory += 1
            if self._out_of_memory >= OUT_OF_MEMORY_LIMIT:
                self.mode = "sequential"
            torch.cuda.empty_cache()
            return sequential(retain_graph)
        except (RuntimeError, NotImplementedError) as error:
            warnings.warn(
                f"batched per-task gradients unavailable for this model ({error}); using K sequential backwards",
                RuntimeWarning,
                stacklevel=2,
            )
            self.mode = "sequential"
            return sequential(retain_graph)
        if self._auto_calls == 1:  # the first call warms the batched path up; its time is not representative
            return result
        started = _settled_clock()
        result = sequential(retain_graph)
        sequential_seconds = _settled_clock() - started
        self.mode = "batched" if batched_seconds <= sequential_seconds else "sequential"
        self.choice = {
            "gradient_mode/batched": float(self.mode == "batched"),
            "gradient_mode/batched_seconds": batched_seconds,
            "gradient_mode/sequential_seconds": sequential_seconds,
        }
        return result


def _settled_clock() -> float:
    """``perf_counter`` once the current CUDA device has run what was queued (the choice compares the work,
    not the launches; it is made once, so the two waits cost nothing over a run)."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


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
