"""Per-task gradients of a trunk of linear layers and elementwise activations, as batched matrix products.

The vmapped trunk backward (``task_gradients.batched_backward``) goes through every node's batching
rule and returns one [K, *shape] tensor per parameter, which then costs a concatenation into [K, P].
For a chain of linear layers and activations (an MLP encoder) the backward is a few products: the K
output gradients go down as one [K, N, features] tensor, one matrix product per layer, and each layer's
K weight gradients are one batched product written straight into its columns of the [K, P] result.

The chain is read from the autograd graph of the forward just run, so it is what the code computed,
whichever modules or functional calls produced it. Any node outside the supported set (convolutions,
normalisation, branches, a parameter used twice) gives no plan, and the caller falls back to the
vmapped backward. Gradient hooks on the trunk's intermediate tensors are not run (parameters with
hooks give no plan).

Under autocast the chain runs in the autocast dtype (bfloat16) from weights cast on their way in (a copy node
between each parameter and its product). The products then take the same bfloat16 operands as autograd's
backward would, with the matrix kernels' float32 accumulation, and each parameter's columns receive their
gradient in the parameters' dtype, as the cast's backward gives it; bias columns are summed in that dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.graph import Node

from flatmtl.workers.mtl.flat import FlatParams

ELEMENTWISE = frozenset(
    {
        "ReluBackward0",
        "LeakyReluBackward0",
        "EluBackward0",
        "SiluBackward0",
        "TanhBackward0",
        "SigmoidBackward0",
    }
)
"""Backward nodes of elementwise functions: called on a [K, *shape] gradient, they broadcast their saved
[*shape] tensors over the K rows."""
GELU = "GeluBackward0"
"""GELU's backward, which does not broadcast in bfloat16 on the CPU (oneDNN), so it is called on its saved
input expanded to the K rows instead."""

VIEWS = frozenset({"ViewBackward0", "UnsafeViewBackward0"})
CAST = "ToCopyBackward0"
"""A parameter cast (autocast's copy of a weight into its dtype) whose backward casts the gradient back."""


class _UnsupportedError(Exception):
    """The graph holds a node this module does not differentiate."""


@dataclass(frozen=True)
class Linear:
    """``out = input @ weight.T (+ bias)`` (an addmm or mm node): the weight's columns with the saved
    input (None where the weight is not trained), the bias's columns, and ``weight.T`` for the gradient
    below (None where nothing below needs one)."""

    weight: tuple[slice, Tensor] | None
    bias: slice | None
    weight_t: Tensor | None


@dataclass(frozen=True)
class Elementwise:
    node: Node


@dataclass(frozen=True)
class Gelu:
    saved_input: Tensor
    approximate: str


@dataclass(frozen=True)
class View:
    shape: tuple[int, ...]


@dataclass
class Plan:
    """The steps from the trunk's output down to the data, the parameters none of them reaches, and the dtype
    the chain computed in (its output's: the autocast dtype under autocast)."""

    steps: list[Linear | Elementwise | Gelu | View]
    unreached: list[slice]
    dtype: torch.dtype


def plan(source: Tensor, shared: FlatParams) -> Plan | None:
    """How to differentiate ``source`` w.r.t. the shared parameters, or None where the graph leaves the
    supported set (the caller then takes the vmapped backward)."""
    if source.grad_fn is None:
        return None
    walk = _Walk(shared)
    try:
        steps = walk.steps(source.grad_fn)
    except (_UnsupportedError, AttributeError):  # AttributeError: a node's saved fields differ (another torch)
        return None
    unreached = [cols for key, (cols, _) in walk.columns.items() if key not in walk.used]
    return Plan(steps, unreached, source.dtype)


@torch.no_grad()
def task_gradients(trunk: Plan, rows: Tensor, shared: FlatParams) -> Tensor:
    """[K, P] in the parameters' dtype: row k is the gradient of ``<source, rows[k]>`` w.r.t. the shared
    parameters (all of them, as ``FlatParams.flatten_batched`` gives, also where ``shared`` is one rank's shard
    view). The products run in the chain's own dtype, whatever autocast surrounds the call.

    The rows go down in chunks sized so that the activation gradients alive at once (two per row, each as
    large as the widest layer's input over the batch) take at most half the memory of the [K, P] result:
    with many tasks and wide layers all K rows at once would hold several times what K sequential backwards
    do, and chunks of a few rows are no slower (their products stay in cache)."""
    num_rows = rows.shape[0]
    out = torch.empty(num_rows, shared.bounds[-1], dtype=shared.dtype, device=rows.device)
    chunk = max(1, out.numel() // (4 * _widest_row(trunk, rows)))
    with torch.autocast(rows.device.type, enabled=False):
        for first in range(0, num_rows, chunk):
            _chunk_gradients(trunk, rows[first : first + chunk].to(trunk.dtype), out[first : first + chunk])
    for cols in trunk.unreached:
        out[:, cols].zero_()
    return out


def _widest_row(trunk: Plan, rows: Tensor) -> int:
    """Elements of the largest gradient one row takes on its way down (the source's, or a layer input's)."""
    inputs = [step.weight[1].numel() for step in trunk.steps if isinstance(step, Linear) and step.weight is not None]
    return max([rows[0].numel(), *inputs])


def _chunk_gradients(trunk: Plan, rows: Tensor, out: Tensor) -> None:
    """These rows' gradients into their rows of the result (the columns of parameters the trunk reaches)."""
    num_rows = rows.shape[0]
    grad = rows
    for step in trunk.steps:
        if isinstance(step, Elementwise):
            grad = step.node(grad)
        elif isinstance(step, Gelu):
            saved = step.saved_input.expand_as(grad)
            grad = torch.ops.aten.gelu_backward(grad, saved, approximate=step.approximate)
        elif isinstance(step, View):
            grad = grad.reshape(num_rows, *step.shape)
        else:
            if step.weight is not None:
                cols, saved_input = step.weight
                inputs = saved_input.expand(num_rows, *saved_input.shape)
                weight = out[:, cols].view(num_rows, grad.shape[-1], inputs.shape[-1])
                if weight.dtype == grad.dtype:
                    torch.bmm(grad.transpose(1, 2), inputs, out=weight)
                else:
                    weight.copy_(torch.bmm(grad.transpose(1, 2), inputs))
            if step.bias is not None:
                torch.sum(grad, dim=1, dtype=out.dtype, out=out[:, step.bias])
            if step.weight_t is not None:
                grad = grad @ step.weight_t.T


class _Walk:
    """Reads the chain of nodes below a trunk output, claiming each shared parameter at most once."""

    def __init__(self, shared: FlatParams) -> None:
        self.columns = {
            id(p): (slice(a, b), p)
            for p, a, b in zip(shared.params, shared.bounds[:-1], shared.bounds[1:], strict=True)
        }
        self.used: set[int] = set()

    def steps(self, node: Node | None) -> list[Linear | Elementwise | Gelu | View]:
        steps: list[Linear | Elementwise | Gelu | View] = []
        while node is not None:
            name = type(node).__name__
            nexts = [fn for fn, _ in node.next_functions]
            if name in ELEMENTWISE and len(nexts) == 1:
                steps.append(Elementwise(node))
            elif name == GELU and len(nexts) == 1:
                steps.append(Gelu(node._saved_self, node._saved_approximate))
            elif name in VIEWS and len(nexts) == 1:
                steps.append(View(tuple(node._saved_self_sym_sizes)))
            elif name == "AddmmBackward0" and node._saved_alpha == 1 and node._saved_beta == 1:
                bias, nexts = nexts[0], nexts[1:]
                steps.append(self.linear(node, node._saved_mat1, bias, nexts[1]))
            elif name == "MmBackward0":
                steps.append(self.linear(node, node._saved_self, None, nexts[1]))
            else:
                raise _UnsupportedError
            node = nexts[0]
        return steps

    def linear(self, node: Node, saved_input: Tensor | None, bias: Node | None, weight_t: Node | None) -> Linear:
        """An addmm/mm node whose second factor is ``weight.T`` of a shared parameter (``nn.Linear``)."""
        in_features, out_features = node._saved_mat2_sym_sizes
        weight = None
        if weight_t is not None:
            if type(weight_t).__name__ != "TBackward0" or saved_input is None:
                raise _UnsupportedError
            weight = (self.claim(weight_t.next_functions[0][0], (out_features, in_features)), saved_input)
        bias_cols = None if bias is None else self.claim(bias, (out_features,))
        return Linear(weight, bias_cols, node._saved_mat2)

    def claim(self, node: Node | None, shape: tuple[int, ...]) -> slice:
        """The columns of the shared parameter that ``node`` accumulates into (hook-free, used once), through
        a cast of the parameter where there is one."""
        if type(node).__name__ == CAST and len(node.next_functions) == 1:  # type: ignore[union-attr]
            node = node.next_functions[0][0]  # type: ignore[union-attr]
        param = getattr(node, "variable", None)
        key = id(param)
        if param is None or key not in self.columns or key in self.used:
            raise _UnsupportedError
        cols, owner = self.columns[key]
        if tuple(owner.shape) != shape or owner._backward_hooks:
            raise _UnsupportedError
        self.used.add(key)
        return cols
