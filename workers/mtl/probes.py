"""Forward-only losses at many points of the shared parameters in a few vmapped forwards.

SAMO estimates each task's gradient from two forwards along a random direction: 2K forwards per step
with one direction per task. Each forward alone is a chain of small operations whose fixed cost
dominates on modest models; ``torch.func.vmap`` over the points turns the chain into one chain of
batched operations. The closure runs unchanged inside ``functional_call``, which swaps the module's
shared parameters for ``theta + offset`` while it runs. Closures vmap cannot batch (dropout, BatchNorm
updating running statistics in training mode, data-dependent Python) raise inside vmap; the probe then
reports itself unsupported and the caller takes one forward per point from then on, which gives the
same losses. Models with convolutions take one forward per point from the start: vmap runs a convolution
over batched weights as a grouped convolution, which on CPU is slower than the separate forwards.
``benchmarks/mtl_core.py`` times both ways side by side ("samo" and "samo, a forward/probe").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from flatmtl.workers.mtl.flat import FlatParams

MAX_PROBE_ELEMENTS = 1 << 24
"""Moved parameters materialized per vmapped chunk (points x shared parameters): 64 MiB in float32."""
MAX_PROBE_POINTS = 8
"""Points per vmapped chunk: a wider batch of points is no faster per point once its activations leave the
cache (an MLP at batch 256 is fastest at 7 of its 28 points), while its memory grows with every point."""


class _ClosureCall(nn.Module):
    """Runs a closure as the forward of a module that owns the model, so functional_call can swap the
    model's parameters around it."""

    def __init__(self, model: nn.Module, closure: Callable[[], object]) -> None:
        super().__init__()
        self.model = model
        self.closure = closure

    def forward(self) -> object:
        return self.closure()


class BatchedProbes:
    """Losses at ``theta + scale * directions[m]`` for every row m, the model's shared parameters moved, nothing
    else. The scale is applied inside the vmapped forward, so no scaled copy of the directions is made."""

    def __init__(self, model: nn.Module, shared: Sequence[nn.Parameter]) -> None:
        names = {id(param): name for name, param in model.named_parameters()}
        missing = [index for index, param in enumerate(shared) if id(param) not in names]
        if missing:
            raise ValueError(f"shared parameters {missing} are not parameters of the model")
        self.model = model
        self.names = [f"model.{names[id(param)]}" for param in shared]
        self.supported = not any(isinstance(module, nn.modules.conv._ConvNd) for module in model.modules())

    def __call__(
        self,
        closure: Callable[[], object],
        weigh: Callable[[Tensor], Tensor],
        shared: FlatParams,
        directions: Tensor,
        scale: float,
    ) -> Tensor | None:
        """[M, K] weighted losses, or None if the closure cannot run under vmap (then never tried again)."""
        if not self.supported:
            return None
        caller = _ClosureCall(self.model, closure)
        base = [param.detach() for param in shared.params]

        def losses_at(direction: Tensor) -> Tensor:
            pieces = zip(self.names, base, shared.views(direction), strict=True)
            moved = {name: value + scale * piece for name, value, piece in pieces}
            out = functional_call(caller, moved, (), strict=False)
            raw = out[0] if isinstance(out, tuple) else out
            return weigh(raw)

        chunk = max(1, min(MAX_PROBE_POINTS, MAX_PROBE_ELEMENTS // max(1, shared.numel)))
        try:
            with torch.no_grad():
                return vmap(losses_at, chunk_size=chunk)(directions)
        except (RuntimeError, NotImplementedError, ValueError):
            self.supported = False
            return None
