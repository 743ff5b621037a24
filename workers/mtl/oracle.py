"""The primitives a wrapper composes a training step from.

The oracle hides where parameters live (whole or sharded), how gradients are reduced across ranks
and how the weighting applies, so each wrapper is written once: forward, per-task gradients,
perturb-and-restore, aggregate, norms, write the update. Every perturbation is undone by copying
saved values back (bit-exact, never by subtracting) and buffers such as BatchNorm running statistics
are restored after perturbed passes, so they never move there.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.overrides import has_torch_function

from flatmtl.workers.mtl.base import (
    Aggregator,
    GramAggregator,
    LossWeighting,
    gram_matrix,
    on_device_of,
    wide_gram,
)
from flatmtl.workers.mtl.checks import check_finite
from flatmtl.workers.mtl.communicator import Communicator
from flatmtl.workers.mtl.errors import MethodError, NonFiniteLossesError
from flatmtl.workers.mtl.flat import FlatParams
from flatmtl.workers.mtl.probes import BatchedProbes
from flatmtl.workers.mtl.task_gradients import TaskGradientEngine, with_output_gradients
from flatmtl.workers.mtl.trunk import TrunkCut

_engine_backward = getattr(torch.autograd.graph, "_engine_run_backward", None)
"""The engine call behind ``Tensor.backward``. ``backward(inputs=...)`` first checks every input for a tensor
subclass in Python, which for a model's few dozen parameters costs a few percent of a small model's step; the
one-backward step makes that check in one call (``has_torch_function``) and, where no input overrides torch
functions, calls the engine itself, as ``backward`` would next."""

LossClosure = Callable[[], Tensor | tuple[Tensor, Tensor]]
"""Runs the forward pass at the current parameters and returns the K per-task losses (this rank's
batch), or ``(losses, shared_representation)`` for methods that need the representation (MGDA-UB)."""


@dataclass
class TaskGradients:
    """Per-task gradients, already reduced across ranks."""

    shared: Tensor
    heads: list[Tensor]
    representation: Tensor | None = None


@dataclass
class StepRecord:
    """What one step measured, for logs, metrics and diagnostics (all detached)."""

    losses: Tensor | None = None
    gram: Tensor | None = None
    host_loss_values: list[float] | None = None
    """``losses`` as Python numbers, from the step's one device-to-host copy (``GradientOracle.host_values``)."""
    host_gram: Tensor | None = None
    """``gram`` on the CPU, where the aggregator solved on it (read with the losses in the same copy)."""
    seconds_total: float = 0.0
    seconds_aggregation: float = 0.0
    seconds_perturbed: float = 0.0
    timed: bool = True
    """Whether the seconds above are the work's: on CUDA kernels run after their launch returns, so a step is
    timed (synchronizing at each mark) only on diagnostics steps, and elsewhere its seconds mean nothing."""
    forward_passes: int = 0
    backward_passes: int = 0
    extras: dict[str, float] = field(default_factory=dict)
    """Occasional named figures, such as what ``gradient_mode="auto"`` measured on the step it chose a path."""

    @property
    def host_losses(self) -> Tensor | None:
        """``losses`` on the CPU in float64 (``host_loss_values`` as a tensor)."""
        return None if self.host_loss_values is None else torch.tensor(self.host_loss_values, dtype=torch.float64)


class OneBackwardInputs:
    """What every one-backward step (``GradientOracle.weighted_sum_step``) of a step object reuses: the parameters
    its backward fills, and for the fused pass that scales the summed shared gradients to their mean and flags a
    NaN or inf on the way (the kernel that unscales mixed-precision gradients) its flag, which stays zero between
    steps, and its factor 1/K. On a small model a few K-sized tensors and lists made per step are a measurable
    share of what the step costs beyond plain backprop."""

    def __init__(self, shared: FlatParams, heads: Sequence[FlatParams]) -> None:
        self.shared = tuple(shared.params)
        self.params = (*self.shared, *(param for head in heads for param in head.params))
        self.num_tasks = len(heads)
        self.flag_and_scale: tuple[Tensor, Tensor] | None = None

    def fused_pass(self, grads: Sequence[Tensor]) -> tuple[Tensor, Tensor] | None:
        """The flag and the factor for ``grads``, on their device; None where the pass does not apply: one task,
        or float64 gradients, which its float32 factor would round (they are divided exactly and checked apart)."""
        if self.num_tasks == 1 or any(grad.dtype == torch.float64 for grad in grads):
            return None
        device = grads[0].device
        if self.flag_and_scale is None or self.flag_and_scale[0].device != device:
            self.flag_and_scale = torch.zeros(1, device=device), torch.full((1,), 1 / self.num_tasks, device=device)
        return self.flag_and_scale


class GradientOracle:
    def __init__(
        self,
        closure: LossClosure,
        shared: FlatParams,
        heads: Sequence[FlatParams],
        weighting: LossWeighting,
        aggregator: Aggregator,
        comm: Communicator,
        generator: torch.Generator,
        gradient_engine: TaskGradientEngine,
        buffers: Sequence[Tensor] = (),
        trunk: TrunkCut | None = None,
        probes: BatchedProbes | None = None,
        *,
        diagnostics: bool = True,
        host_generator: torch.Generator | None = None,
        one_backward: OneBackwardInputs | None = None,
    ) -> None:
        self.closure = closure
        self.shared = shared
        self.heads = list(heads)
        self.num_tasks = len(self.heads)
        self.weighting = weighting
        self.aggregator = aggregator
        self.comm = comm
        self.generator = generator
        self.host_generator = host_generator or generator
        """What aggregators draw from (task orders, seeds): on the CPU, so no draw waits for the device."""
        self.gradient_engine = gradient_engine
        self.one_backward = one_backward
        """The step object's reused inputs of ``weighted_sum_step`` (built there when not given)."""
        self.buffers = list(buffers)
        self.record = StepRecord()
        self.trunk = trunk
        self.probes = probes
        self.diagnostics = diagnostics
        device = shared.device
        self.record.timed = diagnostics or device.type != "cuda"
        self._synchronize = device if self.record.timed and device.type == "cuda" else None
        self._representation: Tensor | None = None
        self._finite_update: Tensor | None = None
        self._cut_losses: weakref.ref[Tensor] | None = None
        self._heads_recorded = False

    @property
    def wants_gram(self) -> bool:
        """Whether this step must record the K x K Gram: a diagnostics step, or a weighting that observes it."""
        return self.diagnostics or self.weighting.observes_gram

    @property
    def one_backward_suffices(self) -> bool:
        """The aggregator averages the task gradients and nobody wants the Gram: the update is the gradient
        of the mean weighted loss, one backward (``weighted_sum_step``) instead of K."""
        return self.aggregator.averages_gradients and not self.wants_gram

    # ---- forward -------------------------------------------------------------------------------
    def losses(self, *, per_task: bool = True) -> Tensor:
        """Forward pass: the K weighted losses (with graph). The first call of a step also starts the
        weighting's step and fills the gradients of its learnable parameters. ``per_task=False`` when only
        single-objective gradients follow (``task_gradient``): the graph is then not cut at the heads,
        whose two-stage backward only pays off for K gradients at once."""
        weighted, first = self._forward(cut=per_task)
        learnable = self.weighting.parameters()
        if first and learnable:
            grads = torch.autograd.grad(weighted.sum(), learnable, retain_graph=True)
            self._set_learnable_grads(learnable, grads)
        return weighted

    def _set_learnable_grads(self, learnable: Sequence[Tensor], grads: Sequence[Tensor | None]) -> None:
        for param, grad in zip(learnable, grads, strict=True):
            param.grad = self.comm.mean(torch.zeros_like(param) if grad is None else grad.detach().clone())

    def weighted_sum_step(self) -> None:
        """The whole step of an averaging aggregator: forward and ONE backward of the weighted losses' sum.

        The shared parameters get the sum's gradient over K, the mean task gradient the aggregator would
        return from K per-task gradients; each head its own task's gradient; the weighting's learnable
        parameters theirs from the same backward. No Gram is recorded. On whole parameters in one process
        this is autograd's own ``backward`` into ``.grad`` (which keeps autograd's buffers instead of copying
        them), with no flat [P] copies; a weighting with step weights (``LossWeighting.step_weights``) gives
        them as the raw losses' output gradient, and its learnable parameters' gradients directly.
        """
        raw, _ = self._raw_forward(cut=False)
        learnable = self.weighting.parameters()
        if self.comm.world_size > 1 or type(self.shared) is not FlatParams:
            weighted = self.weighting.weigh(raw)
            head_params = [p for head in self.heads for p in head.params]
            params = [*self.shared.params, *head_params, *learnable]
            grads = torch.autograd.grad(weighted.sum(), params, allow_unused=True)
            self.record.backward_passes += 1
            num_shared, num_heads = len(self.shared.params), len(head_params)
            self._set_learnable_grads(learnable, grads[num_shared + num_heads :])
            flat = self.shared.flatten(grads[:num_shared]).div_(self.num_tasks)
            flat = self.comm.reduce_task_gradients(flat.unsqueeze(0))[0]
            heads = self._split_heads(self.heads, grads[num_shared : num_shared + num_heads])
            self.write(flat, self._reduce_heads(heads))
            return
        reused = self.one_backward or OneBackwardInputs(self.shared, self.heads)
        weights = self.weighting.step_weights(raw)
        params = (*reused.params, *learnable) if learnable and weights is None else reused.params
        for param in params:
            param.grad = None
        if learnable and weights is not None:
            for param, grad in zip(learnable, self.weighting.learnable_grads(raw.detach(), weights), strict=True):
                param.grad = grad
        if _engine_backward is None or has_torch_function(params):
            total = self.weighting.weigh(raw).sum() if weights is None else (weights * raw).sum()
            total.backward(inputs=params)
        else:
            output, gradient = (raw, weights) if weights is not None else self._weighted_sum(raw)
            _engine_backward((output,), (gradient,), False, False, params, allow_unreachable=True, accumulate_grad=True)
        self.record.backward_passes += 1
        for param in params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
        shared_grads = [param.grad for param in reused.shared]
        fused = reused.fused_pass(shared_grads)
        if fused is not None:  # the mean and its check in one pass
            flag, scale = fused
            torch._amp_foreach_non_finite_check_and_unscale_(shared_grads, flag, scale)
            [[non_finite]] = self.host_values(flag)
            if non_finite:
                flag.zero_()
                check_finite(self.aggregator.method_name, "update", self.shared.flatten(shared_grads))
            return
        if self.num_tasks > 1:
            torch._foreach_div_(shared_grads, float(self.num_tasks))
        [norms] = self.host_values(torch.stack(torch._foreach_norm(shared_grads)))
        if not all(map(math.isfinite, norms)):  # a norm that overflows falls through to the exact test
            check_finite(self.aggregator.method_name, "update", self.shared.flatten(shared_grads))

    def _weighted_sum(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        """The weighted losses' sum and its output gradient 1, for a weighting without fixed step weights."""
        total = self.weighting.weigh(raw).sum()
        return total, torch.ones_like(total)

    def _forward(self, *, cut: bool) -> tuple[Tensor, bool]:
        """The closure's losses, checked and weighted, and whether this was the step's first forward with
        graph (which starts the weighting's step). ``cut``: record the trunk cut at the declared heads."""
        raw, first = self._raw_forward(cut=cut)
        weighted = self.weighting.weigh(raw)
        self._cut_losses = weakref.ref(weighted) if cut and self.trunk and self.trunk.active else None
        return weighted, first

    def _raw_forward(self, *, cut: bool) -> tuple[Tensor, bool]:
        """``_forward``'s losses before weighing."""
        with self.trunk.recording() if cut and self.trunk else nullcontext():
            out = self.closure()
        self._heads_recorded = self._heads_recorded or bool(cut and self.trunk)
        raw, self._representation = out if isinstance(out, tuple) else (out, None)
        if raw.dim() != 1 or raw.shape[0] != self.num_tasks:
            raise MethodError(
                f"the loss closure must return {self.num_tasks} per-task losses, got shape {tuple(raw.shape)}"
            )
        self.record.forward_passes += 1
        first = self.record.losses is None
        if first:
            detached = self.comm.mean(raw.detach())
            self.record.losses = detached  # checked with the step's first host read (``on_host``)
            self.weighting.begin_step(detached, self.generator)
        return raw, first

    def forward_losses(self) -> Tensor:
        """Forward only (no graph): the K weighted losses averaged over ranks, for SPSA estimates."""
        with torch.no_grad():
            out = self.closure()
            raw = out[0] if isinstance(out, tuple) else out
            self.record.forward_passes += 1
            return self.comm.mean(self.weighting.weigh(raw).detach())

    def probe_losses(self, move: Displacement, directions: Tensor, scale: float) -> Tensor:
        """Forward only: the K weighted losses at ``theta + scale * directions[m]`` (shared parameters moved,
        heads at theta) for every row, [M, K], averaged over ranks. Vmapped forwards over chunks of the rows
        where the model allows (``flatmtl.workers.mtl.probes``), else one forward per row. Leaves every
        parameter at theta."""
        move()
        batched = (
            None
            if self.probes is None
            else self.probes(self.closure, self.weighting.weigh, self.shared, directions, scale)
        )
        if batched is None:
            rows = []
            for direction in directions:
                move(direction * scale)
                rows.append(self.forward_losses())
            move()
            return torch.stack(rows)
        self.record.forward_passes += directions.shape[0]
        return self.comm.mean(batched.detach())

    # ---- gradients -----------------------------------------------------------------------------
    def task_gradients(self, weighted: Tensor, *, retain_graph: bool = False) -> TaskGradients:
        """Gradient of each weighted loss w.r.t. the shared parameters [K, P] and its own head.

        Heads are disjoint (task k's head only moves loss k), so one backward of the summed losses
        gives every head its own task's gradient; only the shared parameters need K gradients each.
        """
        if self._through_trunk(weighted):
            return self._task_gradients_through_trunk(weighted, retain_graph)
        representation = None
        if self._weighs_by_representation() and self._representation is not None:
            rep_grads = self.gradient_engine(weighted, [self._representation], retain_graph=True)[0]
            representation = rep_grads.reshape(self.num_tasks, -1)
        heads = self._head_gradients(weighted.sum(), retain_graph=True)
        grads = self.gradient_engine(weighted, self.shared.params, retain_graph=retain_graph)
        self.record.backward_passes += self.num_tasks
        shared = self.shared.flatten_batched(grads, self.num_tasks)
        return TaskGradients(self.comm.reduce_task_gradients(shared), self._reduce_heads(heads), representation)

    def _weighs_by_representation(self) -> bool:
        return self.aggregator.uses_representation and isinstance(self.aggregator, GramAggregator)

    def representation_step(self, weighted: Tensor) -> bool:
        """The whole step of a ``uses_representation`` aggregator, where the representation is known: K
        gradients of the losses w.r.t. the shared representation (cheap: the heads only, when the model
        declares them), the aggregator's one output gradient from them, and one backward of it through the
        trunk. Heads get their own task's gradient. On diagnostics steps the per-task parameter gradients
        are taken as well, for the Gram. False (nothing done) where the representation is unknown."""
        if self._through_trunk(weighted):
            sources, rows, heads = self._trunk_rows(weighted, retain_graph=False)
        elif self._representation is not None:
            heads = self._head_gradients(weighted.sum(), retain_graph=True)
            sources = [self._representation]
            rows = self.gradient_engine(weighted, sources, retain_graph=True)
        else:
            return False
        self.record.backward_passes += self.num_tasks
        if self.wants_gram and sources:
            grads = self.gradient_engine.flat_backward(sources, rows, self.shared, retain_graph=True)
            self.record.gram = self.comm.shard_sum(gram_matrix(grads)).detach()
            assert self.record.losses is not None
            self.weighting.observe(self.record.losses, self.record.gram)
        started = self.clock()
        combined = self.aggregator.combine_representation(
            rows,
            sources,
            losses=self._losses_for(self.aggregator),
            generator=self.host_generator,
            reduce_gram=lambda gram: self.on_host(self.comm.mean(gram))[0],
        )
        self.record.seconds_aggregation += self.clock() - started
        if sources:
            objective = with_output_gradients(sources, combined)
            grads = torch.autograd.grad(objective, self.shared.params, allow_unused=True)
            shared = self.shared.flatten(grads)
        else:
            shared = self.shared.flatten([None] * len(self.shared.params))
        shared = self.comm.reduce_task_gradients(shared.unsqueeze(0))[0]
        self.write(shared, self._reduce_heads(heads))
        return True

    def task_gradient(self, weighted: Tensor, task: int) -> tuple[Tensor, Tensor]:
        """Gradient of one task's weighted loss: (shared [P], its head [P_task]), reduced."""
        head = self.heads[task]
        self.record.backward_passes += 1
        if self._through_trunk(weighted):
            leaf_grads, head_grads = self._backward_to_trunk(weighted[task], [head], retain_graph=False)
            shared = self._trunk_gradient(leaf_grads, retain_graph=False)
            own = head_grads[0]
        else:
            grads = torch.autograd.grad(weighted[task], [*self.shared.params, *head.params], allow_unused=True)
            shared = self.shared.flatten(grads[: len(self.shared.params)])
            own = head.flatten(grads[len(self.shared.params) :])
        shared = self.comm.reduce_task_gradients(shared.unsqueeze(0))[0]
        return shared, self.comm.mean(own)

    def task_gradient_alone(self, task: int) -> tuple[Tensor, Tensor]:
        """A forward at the current parameters and the gradient of task ``task``'s weighted loss: (shared [P], its
        head), reduced; what a per-task SAM point needs. Where the model declares its heads and this step's forward
        recorded their outputs, the forward runs the trunk and this task's head only (``TrunkCut.alone``): the
        other heads replay their outputs without graph, so neither their forwards nor their backwards are paid at
        each of K points. Weightings scale each loss by itself, so the others' stale values change nothing."""
        if self.trunk is None or not self._heads_recorded:
            return self.task_gradient(self.losses(per_task=False), task)
        with self.trunk.alone(task):
            weighted, _ = self._forward(cut=False)
        return self.task_gradient(weighted, task)

    def mean_gradient(self, weighted: Tensor, *, retain_graph: bool = False) -> tuple[Tensor, list[Tensor]]:
        """Gradient of the mean weighted loss in one backward: (shared [P], per-task heads)."""
        objective = weighted.mean()
        self.record.backward_passes += 1
        if self._through_trunk(weighted):
            leaf_grads, heads = self._backward_to_trunk(objective, self.heads, retain_graph=retain_graph)
            shared = self._trunk_gradient(leaf_grads, retain_graph=retain_graph)
        else:
            heads = self._head_gradients(objective, retain_graph=True)
            grads = torch.autograd.grad(objective, self.shared.params, retain_graph=retain_graph, allow_unused=True)
            shared = self.shared.flatten(grads)
        shared = self.comm.reduce_task_gradients(shared.unsqueeze(0))[0]
        return shared, self._reduce_heads(heads)

    def _head_gradients(self, objective: Tensor, *, retain_graph: bool) -> list[Tensor]:
        """Each head's flat gradient of ``objective`` (heads only: the backward stops at the trunk)."""
        head_params = [p for head in self.heads for p in head.params]
        if not head_params:
            return [head.flatten([]) for head in self.heads]
        grads = torch.autograd.grad(objective, head_params, retain_graph=retain_graph, allow_unused=True)
        return self._split_heads(self.heads, grads)

    @staticmethod
    def _split_heads(heads: Sequence[FlatParams], grads: Sequence[Tensor | None]) -> list[Tensor]:
        flat, offset = [], 0
        for head in heads:
            flat.append(head.flatten(grads[offset : offset + len(head.params)]))
            offset += len(head.params)
        return flat

    # ---- gradients through the trunk cut (models that declare their task heads) ----------------
    def _through_trunk(self, weighted: Tensor) -> bool:
        """Whether ``weighted`` came from the latest forward and that forward cut the graph at the heads."""
        return self._cut_losses is not None and self._cut_losses() is weighted

    def _backward_to_trunk(
        self, objective: Tensor, heads: Sequence[FlatParams], *, retain_graph: bool
    ) -> tuple[list[Tensor | None], list[Tensor]]:
        """One backward through the heads only: the heads' inputs' gradients and the heads' own."""
        assert self.trunk is not None
        leaves = self.trunk.leaves
        head_params = [p for head in heads for p in head.params]
        grads = torch.autograd.grad(objective, [*leaves, *head_params], retain_graph=retain_graph, allow_unused=True)
        return list(grads[: len(leaves)]), self._split_heads(heads, grads[len(leaves) :])

    def _trunk_rows(self, weighted: Tensor, *, retain_graph: bool) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """One backward through the heads: the trunk's outputs, their per-task output gradients [K, ...] and the
        heads' own gradients. The leaves' gradients are dropped here, not held beside the rows stacked from them."""
        assert self.trunk is not None
        leaf_grads, heads = self._backward_to_trunk(weighted.sum(), self.heads, retain_graph=retain_graph)
        sources, rows = self.trunk.trunk_rows(leaf_grads, self.num_tasks)
        return sources, rows, heads

    def _trunk_gradient(self, leaf_grads: Sequence[Tensor | None], *, retain_graph: bool) -> Tensor:
        """The shared parameters' flat gradient [P] for one objective, from its heads' input gradients."""
        assert self.trunk is not None
        sources, rows = self.trunk.trunk_rows(leaf_grads, None)
        if not sources:
            return self.shared.flatten([None] * len(self.shared.params))
        objective = with_output_gradients(sources, rows)
        grads = torch.autograd.grad(objective, self.shared.params, retain_graph=retain_graph, allow_unused=True)
        return self.shared.flatten(grads)

    def _task_gradients_through_trunk(self, weighted: Tensor, retain_graph: bool) -> TaskGradients:
        sources, rows, heads = self._trunk_rows(weighted, retain_graph=retain_graph)
        representation = None
        if self._weighs_by_representation() and self._representation is not None:
            if len(sources) == 1 and sources[0] is self._representation:
                rep_grads = rows[0]
            else:
                rep_grads = self.gradient_engine.backward(sources, rows, [self._representation], retain_graph=True)[0]
            representation = rep_grads.reshape(self.num_tasks, -1)
        if sources:
            shared = self.gradient_engine.flat_backward(sources, rows, self.shared, retain_graph=retain_graph)
        else:
            shared = self.shared.flatten_batched([None] * len(self.shared.params), self.num_tasks)
        self.record.backward_passes += self.num_tasks
        return TaskGradients(self.comm.reduce_task_gradients(shared), self._reduce_heads(heads), representation)

    def _reduce_heads(self, heads: list[Tensor]) -> list[Tensor]:
        if not heads or self.comm.world_size == 1:
            return heads
        reduced = self.comm.mean(torch.cat(heads))
        return list(reduced.split([h.numel() for h in heads]))

    # ---- perturbation --------------------------------------------------------------------------
    @contextmanager
    def perturbed(self, shared: Tensor | None = None, heads: Mapping[int, Tensor] | None = None) -> Iterator[None]:
        """Parameters moved by the given offsets inside the block, restored exactly after it."""
        with self.displaced() as move:
            move(shared, heads)
            yield

    @contextmanager
    def displaced(self) -> Iterator[Displacement]:
        """A block that visits several points (SPSA probes, per-task SAM points) with one save and one restore.

        Inside, ``move(shared, heads)`` puts the parameters at their saved values plus the given offsets
        (parts not given return to their saved values). On exit parameters and buffers (BatchNorm running
        statistics) are copied back, bit-exact, however many points were visited.
        """
        displacement = Displacement(self.shared, self.heads)
        saved_buffers = [b.detach().clone() for b in self.buffers]
        started = self.clock()
        try:
            yield displacement
        finally:
            displacement.restore()
            with torch.no_grad():
                for buffer, value in zip(self.buffers, saved_buffers, strict=True):
                    buffer.copy_(value)
            self.record.seconds_perturbed += self.clock() - started

    def random_direction(self) -> Tensor:
        """A standard Gaussian direction over the shared parameters from the step's generator."""
        template = self.shared.params[0]
        return torch.randn(self.shared.numel, generator=self.generator, dtype=template.dtype, device=template.device)

    # ---- aggregation and norms -----------------------------------------------------------------
    def aggregate(
        self,
        grads: Tensor,
        representation: Tensor | None = None,
        *,
        aggregator: Aggregator | None = None,
        commit: bool = True,
    ) -> Tensor:
        """The aggregator's update for a [K, P] matrix.

        ``commit=False`` leaves no trace: the aggregator's state and the generator are rewound, so a
        look-ahead (SAM's ascent direction) does not advance EMAs or random draws. ``aggregator``
        overrides the step's own (F-MTL keeps a second one for the flat parts). The step's first call
        also feeds diagnostics and the weighting's observation with the global Gram matrix.
        """
        aggregator = aggregator or self.aggregator
        saved = None if commit else (aggregator.state_dict(), self.host_generator.get_state())
        started = self.clock()
        seen: list[Tensor] = []

        def reduce_and_remember(gram: Tensor) -> Tensor:
            """The reduced Gram on the host, where the K x K problems are solved: one copy with the losses."""
            reduced = self.comm.shard_sum(gram)
            [host] = self.on_host(reduced)
            seen.append(reduced)
            if self.record.host_gram is None:
                self.record.host_gram = host
            return host

        losses = self._losses_for(aggregator)
        if representation is not None and isinstance(aggregator, GramAggregator):
            weights = aggregator.weights(reduce_and_remember(wide_gram(representation)), losses=losses)
            update = on_device_of(weights, grads) @ grads
        else:
            update = aggregator(
                grads,
                losses=losses,
                generator=self.host_generator,
                reduce_gram=reduce_and_remember,
                check_update=False,
            )
            if aggregator.update_checked_by_gram:  # weights(finite Gram) @ G: G finite, weights finite
                self._finite_update = update
        self.record.seconds_aggregation += self.clock() - started
        if saved is not None:
            aggregator.load_state_dict(saved[0])
            self.host_generator.set_state(saved[1])
        if self.record.gram is None:
            if seen and isinstance(aggregator, GramAggregator):
                self.record.gram = seen[0].detach()
            elif self.wants_gram:
                self.record.gram = self.comm.shard_sum(gram_matrix(grads)).detach()
            if self.record.gram is not None:
                assert self.record.losses is not None
                self.weighting.observe(self.record.losses, self.record.gram)
        return update

    def clock(self) -> float:
        """Seconds for the step's timings: on a timed CUDA step, after the queued kernels have run."""
        if self._synchronize is not None:
            torch.cuda.synchronize(self._synchronize)
        return time.perf_counter()

    def on_host(self, *tensors: Tensor) -> list[Tensor]:
        """``tensors`` copied to the CPU in one transfer, with the step's losses the first time: on CUDA a
        device-to-host copy makes the host wait for every queued kernel, so a step makes as few as it can
        (the Gram a K x K solver needs, and the update's finiteness flag). The losses' finiteness is checked
        here, once per step, and they are kept as ``record.host_loss_values``. Each copy keeps its dtype."""
        values = self.host_values(*tensors)
        return [torch.tensor(v, dtype=t.dtype).view(t.shape) for v, t in zip(values, tensors, strict=True)]

    def host_values(self, *tensors: Tensor) -> list[list[float]]:
        """What ``on_host`` reads, as Python numbers (one flat list per tensor): a flag or a few norms need no
        tensor on the host. The tensors are floating or boolean: ``cat`` promotes them to a type that holds
        each of them exactly, and a Python float holds that. Tensors all on the CPU are read each by itself: no
        transfer to share, and the ``cat`` would cost more than the reads."""
        unread = self.record.losses is not None and self.record.host_loss_values is None
        parts: list[Tensor] = [self.record.losses, *tensors] if unread else list(tensors)  # type: ignore[list-item]
        if not parts:
            return []
        flat = [part if part.dim() == 1 else part.reshape(-1) for part in parts]
        if all(part.is_cpu for part in flat):
            pieces = [part.tolist() for part in flat]
        else:
            values = torch.cat(flat).tolist()
            pieces, start = [], 0
            for part in flat:
                pieces.append(values[start : start + part.numel()])
                start += part.numel()
        if unread:
            losses = pieces.pop(0)
            self.record.host_loss_values = losses
            if not all(map(math.isfinite, losses)):
                bad = [task for task, loss in enumerate(losses) if not math.isfinite(loss)]
                raise NonFiniteLossesError(bad, [losses[task] for task in bad])
        return pieces

    def _losses_for(self, aggregator: Aggregator) -> Tensor | None:
        """The step's losses on the host for an aggregator that uses them, else None (no copy to make)."""
        if not aggregator.needs_losses or self.record.losses is None:
            return None
        if self.record.host_loss_values is None:
            self.host_values()
        return self.record.host_losses

    def norm(self, vector: Tensor) -> Tensor:
        """Euclidean norm over all shards of a [P] vector (or each row of [K, P])."""
        return self.comm.shard_sum(vector.pow(2).sum(dim=-1)).sqrt()

    def layer_norms(self, vector: Tensor) -> Tensor:
        """Per-layer norms over all shards: [L] for a [P] vector, [K, L] for [K, P]."""
        return self.comm.shard_sum(self.shared.layer_sq_norms(vector)).sqrt()

    # ---- output --------------------------------------------------------------------------------
    def write(self, shared_update: Tensor, head_updates: Sequence[Tensor]) -> None:
        """Store the step's update as the parameters' ``.grad`` for the optimizer. Its finiteness is one flag read
        with the losses where they are still unread, and nothing to read for a Gram aggregator's update as it
        came: its Gram was checked on the host, and a combination of finite gradients is finite."""
        if shared_update is not self._finite_update:
            [[finite]] = self.host_values(torch.isfinite(shared_update).all())
            if not finite:
                check_finite(self.aggregator.method_name, "update", shared_update)
        self.shared.set_grad(shared_update)
        for head, update in zip(self.heads, head_updates, strict=True):
            head.set_grad(update)


class Displacement:
    """Moves parameters to saved values plus offsets; what it saved (lazily, on first move) it restores."""

    def __init__(self, shared: FlatParams, heads: Sequence[FlatParams]) -> None:
        self._shared = shared
        self._heads = heads
        self._saved_shared: Tensor | None = None
        self._saved_heads: dict[int, Tensor] = {}
        self._shared_moved = False
        self._moved_heads: set[int] = set()

    def __call__(self, shared: Tensor | None = None, heads: Mapping[int, Tensor] | None = None) -> None:
        heads = heads or {}
        if shared is not None:
            if self._saved_shared is None:
                self._saved_shared = self._shared.values()
            self._shared.copy_(self._saved_shared + shared)
            self._shared_moved = True
        elif self._shared_moved:
            self._restore_shared()
        for task in self._moved_heads - heads.keys():
            self._heads[task].copy_(self._saved_heads[task])
        for task, offset in heads.items():
            if task not in self._saved_heads:
                self._saved_heads[task] = self._heads[task].values()
            self._heads[task].copy_(self._saved_heads[task] + offset)
        self._moved_heads = set(heads)

    def restore(self) -> None:
        if self._shared_moved:
            self._restore_shared()
        for task in self._moved_heads:
            self._heads[task].copy_(self._saved_heads[task])
        self._moved_heads = set()

    def _restore_shared(self) -> None:
        assert self._saved_shared is not None
        self._shared.copy_(self._saved_shared)
        self._shared_moved = False


def model_buffers(model: nn.Module | None) -> list[Tensor]:
    """Floating and integer buffers (BatchNorm running stats, counters) restored after perturbed passes."""
    return [] if model is None else list(model.buffers())
