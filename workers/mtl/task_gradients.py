"""Per-task gradients: one vmapped backward over the K losses (or over the trunk, see ``trunk``), or K
sequential backwards.

The batched path (``is_grads_batched``) pushes K one-hot output gradients through the graph at
once, sharing the kernel launches and Python overhead of K separate passes. ``auto`` chooses by measuring: its
first call takes the batched path (warming it up), its second times both paths on the same gradients and keeps
the faster for good (``choice``). One rule decides without measuring: on the CPU, a graph with a convolution at up
to ``CONVOLUTION_RULE_MAX_TASKS`` tasks takes sequential backwards from the first call (vmap runs a convolution's
backward over K output gradients slower than K separate backwards there, and the gap grows with K), so the batched
path's memory and first-use costs are never paid. With deterministic algorithms on (a training spec's
``deterministic``), ``auto`` keeps the batched path without timing it: timings differ from run to run and the two
paths round differently, so a choice by timing would break the bit-for-bit repeat. An operator with no batching
rule makes ``auto`` fall back to sequential at once, and running out of CUDA memory takes the sequential path for
that call (for good after a few). From a trunk of linear layers and activations, both batched modes skip autograd
for batched matrix products (``flatmtl.workers.mtl.linear_trunk``).

Every backward with given output gradients other than the batched one differentiates a scalar that hands them
to the outputs (``with_output_gradients``) instead of passing them as ``grad_outputs``: the same numbers, without
``torch.autograd``'s Python check of given output gradients, whose first use in a process imports sympy (tens of
MiB resident, held for good, which a process that never needs it should not carry).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

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
CONVOLUTION_RULE_MAX_TASKS = 16
"""Up to this many tasks, ``auto`` takes sequential backwards on the CPU for a graph with a convolution without
measuring (``benchmarks/mtl_core.py``'s per-task gradient paths on LeNet: the vmapped backward is slower at every
K measured, up to this one); beyond it, and on accelerators, it measures."""


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
            outputs,
            rows[0].shape[0],
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
            return sequential_flat_backward(outputs, rows, params, retain_graph=keep)

        return self._run(batched, sequential, retain_graph, None if plan is not None else outputs, num_rows)

    def _run(
        self,
        batched: Callable[[bool], _Result],
        sequential: Callable[[bool], _Result],
        retain_graph: bool,
        outputs: Sequence[Tensor] | None,
        num_rows: int,
    ) -> _Result:
        """``outputs``: the graph both paths go through, for the rule (None where the batched path bypasses
        autograd); ``num_rows``: how many gradients each path takes."""
        if self.mode == "sequential":
            return sequential(retain_graph)
        if self.mode == "batched":
            return batched(retain_graph)
        self._auto_calls += 1
        if self._auto_calls == 1 and outputs is not None and _sequential_by_rule(outputs, num_rows):
            started = _settled_clock()
            result = sequential(retain_graph)
            self.mode = "sequential"
            self.choice = {
                "gradient_mode/batched": 0.0,
                "gradient_mode/by_rule": 1.0,
                "gradient_mode/sequential_seconds": _settled_clock() - started,
            }
            return result
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
        if torch.are_deterministic_algorithms_enabled():
            # Timings differ from run to run, and the two paths round differently: a run that must repeat bit for
            # bit keeps the batched path without measuring.
            self.mode = "batched"
            self.choice = {"gradient_mode/batched": 1.0, "gradient_mode/by_rule": 1.0}
            return result
        del result  # the measurement's batched gradients are not held while the sequential ones are taken
        started = _settled_clock()
        result = sequential(retain_graph)
        sequential_seconds = _settled_clock() - started
        self.mode = "batched" if batched_seconds <= sequential_seconds else "sequential"
        self.choice = {
            "gradient_mode/batched": float(self.mode == "batched"),
            "gradient_mode/by_rule": 0.0,
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
        objective = with_output_gradients(outputs, [r[row] for r in rows])
        grads = torch.autograd.grad(objective, list(params), retain_graph=keep, allow_unused=True)
        for column, (grad, param) in enumerate(zip(grads, params, strict=True)):
            columns[column].append(torch.zeros_like(param) if grad is None else grad)
    return [torch.stack(column) for column in columns]


def sequential_flat_backward(
    outputs: Sequence[Tensor], rows: Sequence[Tensor], params: FlatParams, *, retain_graph: bool
) -> Tensor:
    """``sequential_backward`` as one [K, P] matrix, each row's gradients concatenated into their row as they come:
    one [K, P] and one row's gradients alive, where K rows, their per-parameter stacks and the concatenation of
    those would hold the matrix two or three times over."""
    num_rows = rows[0].shape[0]
    out = torch.empty(num_rows, params.bounds[-1], dtype=params.dtype, device=rows[0].device)
    for row in range(num_rows):
        keep = retain_graph or row < num_rows - 1
        objective = with_output_gradients(outputs, [r[row] for r in rows])
        grads = torch.autograd.grad(objective, params.params, retain_graph=keep, allow_unused=True)
        parts = [
            torch.zeros(n, dtype=p.dtype, device=p.device) if grad is None else grad.reshape(-1)
            for grad, p, n in zip(grads, params.params, params.numels, strict=True)
        ]
        torch.cat(parts, out=out[row])
    return out


def with_output_gradients(outputs: Sequence[Tensor], grads: Sequence[Tensor]) -> Tensor:
    """A zero scalar whose backward hands ``grads[j]`` to ``outputs[j]`` as they are (no arithmetic): its gradient,
    at autograd's default output gradient of one, is the backward of ``outputs`` with output gradients ``grads``,
    bit for bit. Differentiate it only so (it does not scale ``grads`` by its own output gradient)."""
    return _OutputGradients.apply(len(outputs), *outputs, *grads)


class _OutputGradients(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, count: int, *tensors: Tensor) -> Tensor:
        ctx.grads = tensors[count:]
        return tensors[0].new_zeros(())

    @staticmethod
    def backward(ctx: Any, _one: Tensor) -> tuple[Tensor | None, ...]:
        return (None, *ctx.grads, *(None for _ in ctx.grads))


def _sequential_by_rule(outputs: Sequence[Tensor], num_rows: int) -> bool:
    """Whether the backward of ``outputs`` runs on the CPU through a convolution, at few enough rows for the rule
    (``CONVOLUTION_RULE_MAX_TASKS``). Walks the graph once, stopping at the first convolution."""
    if num_rows > CONVOLUTION_RULE_MAX_TASKS or any(output.device.type != "cpu" for output in outputs):
        return False
    pending = [output.grad_fn for output in outputs if output.grad_fn is not None]
    seen = {id(node) for node in pending}
    while pending:
        node = pending.pop()
        if "Convolution" in type(node).__name__:
            return True
        for child, _ in node.next_functions:
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                pending.append(child)
    return False


def _basis(losses: Tensor) -> Tensor:
    return torch.eye(losses.shape[0], dtype=losses.dtype, device=losses.device)


def _zeros_if_none(grad: Tensor | None, param: Tensor, num_rows: int) -> Tensor:
    if grad is None:
        return torch.zeros(num_rows, *param.shape, dtype=param.dtype, device=param.device)
    return grad
