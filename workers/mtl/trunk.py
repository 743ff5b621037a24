"""Per-task gradients in two stages: the task heads, then one batched backward of the shared trunk.

A vmapped backward over the whole graph pushes all K one-hot gradients through every head, although
head k only ever carries task k's: K x K head passes and, where the heads meet the trunk, K dense
[K, batch, features] sums. When a model declares its task heads (modules whose inputs carry every
dependence of a task's loss on the shared parameters), the forward hands each head a detached copy
of its input (a leaf). One backward of the summed losses then gives each head its own gradient and
each leaf ``d loss_k / d input_k``; the trunk is left for one backward from the heads' inputs with
those gradients stacked per task (or summed, for a single objective): batched matrix products where the
trunk is linear layers and activations (``flatmtl.workers.mtl.linear_trunk``), else one vmapped backward. Same
numbers, about half the work at K=14 on an MLP.

The recorded forward also keeps each head's output (detached). A pass that needs one task's gradient only
(a per-task SAM point) then runs the trunk and that task's head alone: every other head replays its kept
output, which carries no graph, so neither their forwards nor their backwards are paid K times over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


@dataclass
class HeadInput:
    """One tensor a head read from the trunk, and the leaf the head saw instead."""

    task: int
    source: Tensor
    leaf: Tensor


class TrunkCut:
    """Cuts the graph at the task heads' inputs during a recorded forward and joins it back in backward."""

    def __init__(self, heads: Sequence[nn.Module]) -> None:
        self.heads = list(heads)
        self.inputs: list[HeadInput] = []
        self.outputs: list[list[object]] = [[] for _ in self.heads]
        """Per head, its outputs in the last recorded forward (detached), in call order."""

    @property
    def active(self) -> bool:
        """Whether the last recorded forward reached the heads through the trunk's graph."""
        return bool(self.inputs)

    @property
    def leaves(self) -> list[Tensor]:
        return [entry.leaf for entry in self.inputs]

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Forward pass with every head reading a leaf copy of each trunk tensor it takes (its output kept)."""
        self.inputs = []
        self.outputs = [[] for _ in self.heads]
        handles: list[RemovableHandle] = []
        for task, head in enumerate(self.heads):
            handles.append(head.register_forward_pre_hook(self._hook(task)))
            handles.append(head.register_forward_hook(self._keep(task)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @contextmanager
    def alone(self, task: int) -> Iterator[None]:
        """Forward pass that runs ``task``'s head only: every other head returns, without running, what it returned
        in the last recorded forward (a call beyond those runs it without graph). The other tasks' losses are then
        stale values with no graph, and a backward of task ``task``'s loss passes its own head alone."""
        others = [(self.heads[other], self.outputs[other]) for other in range(len(self.heads)) if other != task]
        own_forwards = [vars(head).get("forward") for head, _ in others]
        for head, outputs in others:
            vars(head)["forward"] = _replay(outputs, head.forward)
        try:
            yield
        finally:
            for (head, _), own in zip(others, own_forwards, strict=True):
                if own is None:
                    del vars(head)["forward"]
                else:
                    vars(head)["forward"] = own

    def _keep(self, task: int) -> Callable[[nn.Module, tuple[object, ...], object], None]:
        def keep(_module: nn.Module, _args: tuple[object, ...], output: object) -> None:
            self.outputs[task].append(_detached(output))

        return keep

    def _hook(self, task: int) -> Callable[[nn.Module, tuple[object, ...]], tuple[object, ...]]:
        def cut(_module: nn.Module, args: tuple[object, ...]) -> tuple[object, ...]:
            replaced = []
            for arg in args:
                if isinstance(arg, Tensor) and arg.requires_grad:
                    leaf = arg.detach().requires_grad_()
                    self.inputs.append(HeadInput(task, arg, leaf))
                    arg = leaf
                replaced.append(arg)
            return tuple(replaced)

        return cut

    def trunk_rows(
        self, leaf_grads: Sequence[Tensor | None], num_tasks: int | None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """The trunk's outputs and their output gradients from the leaves' gradients.

        ``num_tasks`` given: one row per task (task k's row holds the gradients of the leaves its head
        owns), for a batched backward. ``None``: the leaves' gradients summed, for one plain backward.
        Heads reading the same trunk tensor share one output.
        """
        grouped: dict[int, tuple[Tensor, list[int], list[Tensor]]] = {}
        for entry, grad in zip(self.inputs, leaf_grads, strict=True):
            if grad is not None:
                _, tasks, grads = grouped.setdefault(id(entry.source), (entry.source, [], []))
                tasks.append(entry.task)
                grads.append(grad)
        sources = [source for source, _, _ in grouped.values()]
        if num_tasks is None:
            return sources, [
                grads[0] if len(grads) == 1 else torch.stack(grads).sum(0) for _, _, grads in grouped.values()
            ]
        return sources, [_task_rows(tasks, grads, num_tasks) for _, tasks, grads in grouped.values()]


def _replay(outputs: list[object], forward: Callable[..., object]) -> Callable[..., object]:
    """A head's forward that returns its kept outputs in call order, or runs without graph where none is kept."""
    calls = 0

    def replay(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls <= len(outputs):
            return outputs[calls - 1]
        with torch.no_grad():
            return forward(*args, **kwargs)

    return replay


def _detached(output: object) -> object:
    """A head's output without its graph: tensors detached, tuples, lists and dicts of them walked."""
    if isinstance(output, Tensor):
        return output.detach()
    if isinstance(output, (tuple, list)):
        items = [_detached(item) for item in output]
        return type(output)(*items) if hasattr(output, "_fields") else type(output)(items)
    if isinstance(output, dict):
        return {key: _detached(item) for key, item in output.items()}
    return output


def _task_rows(tasks: list[int], grads: list[Tensor], num_tasks: int) -> Tensor:
    """[K, *shape]: row k sums the gradients of the leaves task k's head owns (one stack where each task
    owns exactly one, in order, as with one head per task on a shared representation). Sums are taken row by
    row, not scattered: no atomics, so the rows are the same on every run, on CUDA too."""
    if tasks == list(range(num_tasks)):
        return torch.stack(grads)
    owned: list[list[Tensor]] = [[] for _ in range(num_tasks)]
    for task, grad in zip(tasks, grads, strict=True):
        owned[task].append(grad)
    zero = grads[0].new_zeros(grads[0].shape)
    return torch.stack([zero if not row else row[0] if len(row) == 1 else torch.stack(row).sum(0) for row in owned])
