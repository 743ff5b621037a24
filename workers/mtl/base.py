"""The three method kinds and the contract between them.

An aggregator maps per-task gradients [K, P] to one update [P]. Most choose K weights from the K x K
Gram matrix alone (``GramAggregator``): that is what lets data-parallel and sharded training agree,
because ``Gram(G)`` is a sum over parameter shards and every rank computes the same weights from it.
A loss weighting rescales the K losses before backward. A wrapper owns the step: how many gradients
are taken, where (perturbed parameters for SAM variants), and how they reach the aggregator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from flatmtl.workers.mtl.checks import check_finite_through, check_gram, check_losses, check_task_matrix

if TYPE_CHECKING:
    from flatmtl.workers.mtl.oracle import GradientOracle

GramReducer = Callable[[Tensor], Tensor]
"""Sums a locally computed K x K Gram over parameter shards (identity when parameters are whole)."""


def identity_reducer(gram: Tensor) -> Tensor:
    return gram


def on_device_of(values: Tensor, like: Tensor) -> Tensor:
    """K host values (weights solved on the CPU) on ``like``'s device and dtype. To CUDA through pinned memory
    and asynchronously: a copy from pageable memory would make the host wait for the device's queue first."""
    values = values.to(like.dtype)
    if like.device.type == "cuda" and values.device.type == "cpu":
        return values.pin_memory().to(like.device, non_blocking=True)
    return values.to(like.device)


_BLOCKED_GRAM_ROWS = 16
"""From this many rows on, MKL's one product ``rows @ rows.T`` runs at full speed however long the rows."""

_BLOCKED_GRAM_BYTES = 4 * 2**20
"""Rows larger than this (about twice a server core's L2 cache) are summed over column blocks of
``_GRAM_BLOCK_BYTES``, which fit in it."""

_GRAM_BLOCK_BYTES = 2**20


def gram_matrix(rows: Tensor) -> Tensor:
    """``rows @ rows.T`` for a [K, P] matrix, the cost every Gram method pays.

    On one CPU thread, with fewer than 16 rows too large for a core's cache, MKL's one product runs several times
    slower than the sum of the products of column blocks that fit in it (``benchmarks/mtl_baselines.py`` prints
    both), so the blocks are summed; elsewhere it is one product."""
    num_rows = rows.shape[0]
    if (
        rows.device.type != "cpu"
        or num_rows >= _BLOCKED_GRAM_ROWS
        or rows.numel() * rows.element_size() <= _BLOCKED_GRAM_BYTES
        or torch.get_num_threads() != 1
    ):
        return rows @ rows.T
    blocks = rows.split(_GRAM_BLOCK_BYTES // (num_rows * rows.element_size()), dim=1)
    gram = blocks[0] @ blocks[0].T
    for block in blocks[1:]:
        gram.addmm_(block, block.T)
    return gram


def wide_gram(rows: Tensor) -> Tensor:
    """``rows @ rows.T`` in float32 at least: bfloat16 gradients (autocast's representation gradients) would
    round entries that sum thousands of products to 3 digits, while their differences (``|g_i - g_j|^2``)
    decide the weights."""
    return gram_matrix(rows.to(torch.promote_types(rows.dtype, torch.float32)))


class Stateful:
    """Methods with memory (EMAs, learned logits, warm starts) expose it for checkpoints.

    State is a dict of tensors and plain values; ``load_state_dict(state_dict())`` restores the
    method exactly, so a resumed run takes the same steps as one that never stopped.
    """

    state_keys: ClassVar[tuple[str, ...]] = ()
    host_state_keys: ClassVar[tuple[str, ...]] = ()
    """State the method keeps on the CPU in float64 (its K x K algebra runs there): loaded back there whatever
    device or dtype a checkpoint carried it in, so a resumed step meets it where an uninterrupted one would."""

    def state_dict(self) -> dict[str, Any]:
        return {key: _clone(getattr(self, key)) for key in self.state_keys}

    def check_state_keys(self, state: dict[str, Any]) -> None:
        """A state saved by another method (or version) is refused before anything is restored from it."""
        unknown = set(state) - set(self.state_keys)
        if unknown:
            raise KeyError(f"{type(self).__name__}: unknown state keys {sorted(unknown)}")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state_keys(state)
        for key in self.state_keys:
            value = _clone(state[key])
            if key in self.host_state_keys and isinstance(value, Tensor):
                value = value.to("cpu", torch.float64)
            setattr(self, key, value)


def map_tensors(function: Callable[[Tensor], Any], value: Any) -> Any:
    """``function`` applied to every tensor of a nested state (dicts, lists, tuples); other values as they are."""
    if isinstance(value, Tensor):
        return function(value)
    if isinstance(value, list | tuple):
        return type(value)(map_tensors(function, item) for item in value)
    if isinstance(value, dict):
        return {key: map_tensors(function, item) for key, item in value.items()}
    return value


def _clone(value: Any) -> Any:
    return map_tensors(lambda tensor: tensor.detach().clone(), value)


class Aggregator(Stateful):
    """Maps per-task gradients of the shared parameters [K, P] to the shared update [P].

    ``reduce_gram`` sums K x K statistics over parameter shards; on whole parameters it is the
    identity. ``generator`` drives every random choice so all ranks take the same step.
    ``uses_representation``: the method is defined on the gradients w.r.t. the shared representation
    (``combine_representation``); on a plain [K, P] matrix it acts on the parameter gradients instead.
    ``averages_gradients``: the update is the plain mean of the task gradients whatever they are, so it
    is the gradient of the mean weighted loss and a step needs one backward, not K (``mean``).
    """

    method_name: ClassVar[str]
    needs_losses: ClassVar[bool] = False
    uses_representation: ClassVar[bool] = False
    averages_gradients: ClassVar[bool] = False
    update_checked_by_gram: ClassVar[bool] = False
    """The update combines gradients whose Gram was checked finite, so it is finite without a check of its own."""

    def __call__(
        self,
        grads: Tensor,
        *,
        losses: Tensor | None = None,
        generator: torch.Generator | None = None,
        reduce_gram: GramReducer = identity_reducer,
        check_update: bool = True,
    ) -> Tensor:
        """The update for ``grads``. ``check_update=False`` leaves an update no Gram vouches for unchecked: a
        step reads its finiteness with the losses in one host copy instead (``GradientOracle.write``)."""
        check_task_matrix(self.method_name, grads)
        check_losses(self.method_name, losses, grads.shape[0], required=self.needs_losses)
        update = self.aggregate(grads, losses=losses, generator=generator, reduce_gram=reduce_gram)
        if check_update and not self.update_checked_by_gram:
            check_finite_through(self.method_name, update, grads, "update")
        return update

    def aggregate(
        self,
        grads: Tensor,
        *,
        losses: Tensor | None,
        generator: torch.Generator | None,
        reduce_gram: GramReducer,
    ) -> Tensor:
        raise NotImplementedError

    def combine_representation(
        self,
        rows: Sequence[Tensor],
        values: Sequence[Tensor],
        *,
        losses: Tensor | None,
        generator: torch.Generator | None,
        reduce_gram: GramReducer,
    ) -> list[Tensor]:
        """For ``uses_representation`` aggregators: the one output gradient of the shared representation from
        the K per-task ones (``rows[j]`` is [K, *shape] for the representation tensor ``values[j]``); a single
        backward of it through the trunk is the shared update. ``reduce_gram`` averages K x K statistics over
        ranks, whose batches differ."""
        raise NotImplementedError


class GramAggregator(Aggregator):
    """An aggregator whose update is ``weights(G G^T) @ G``: shardable with a K x K all-reduce.

    The gradients' finiteness is checked on the Gram (a NaN or inf in [K, P] shows on its diagonal)."""

    update_checked_by_gram: ClassVar[bool] = True

    def weights(
        self, gram: Tensor, *, losses: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """K weights from the (global) Gram matrix; validates, then calls ``compute_weights``."""
        check_gram(self.method_name, gram)
        check_losses(self.method_name, losses, gram.shape[0], required=self.needs_losses)
        return self.compute_weights(gram, losses=losses, generator=generator)

    def compute_weights(self, gram: Tensor, *, losses: Tensor | None, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    def combine_representation(
        self,
        rows: Sequence[Tensor],
        values: Sequence[Tensor],
        *,
        losses: Tensor | None,
        generator: torch.Generator | None,
        reduce_gram: GramReducer,
    ) -> list[Tensor]:
        """The weights from the Gram of the representation's per-task gradients, applied to those gradients.

        Under autocast those gradients are bfloat16: see ``wide_gram``."""
        num_tasks = rows[0].shape[0]
        gram = reduce_gram(sum(wide_gram(row.reshape(num_tasks, -1)) for row in rows))
        weights = self.weights(gram, losses=losses, generator=generator)
        return [torch.tensordot(on_device_of(weights, row), row, dims=1) for row in rows]

    def aggregate(
        self,
        grads: Tensor,
        *,
        losses: Tensor | None,
        generator: torch.Generator | None,
        reduce_gram: GramReducer,
    ) -> Tensor:
        gram = reduce_gram(gram_matrix(grads))
        check_finite_through(self.method_name, gram, grads)
        weights = self.compute_weights(gram, losses=losses, generator=generator)
        return on_device_of(weights, grads) @ grads


class LossWeighting(Stateful):
    """Rescales the K task losses before backward.

    Per step: ``begin_step`` draws anything random or updates from the previous step; ``weigh`` maps
    raw losses to the K weighted losses whose gradients the aggregator sees (it is called again at
    perturbed parameters by SAM wrappers and must give the same weights there); ``observe`` sees the
    raw losses and the Gram of the weighted per-task gradients once per step (GradNorm, DWA, FAMO).
    Learnable weightings expose their parameters; the step fills their ``.grad``.
    ``observes_gram``: the weighting reads the per-task gradients' Gram every step, so every step takes
    per-task gradients (GradNorm); the others see only losses and let averaging aggregators take one backward.
    """

    method_name: ClassVar[str]
    observes_gram: ClassVar[bool] = False

    def setup(self, num_tasks: int, *, dtype: torch.dtype, device: torch.device) -> None:
        """Called once by the step with K and the parameters' dtype/device, before any optimizer is
        built, so learnable weightings can create their parameters."""

    def begin_step(self, losses: Tensor, generator: torch.Generator | None = None) -> None:
        """Called once per step with the detached raw losses at the unperturbed parameters."""

    def weigh(self, losses: Tensor) -> Tensor:
        raise NotImplementedError

    def step_weights(self, losses: Tensor) -> Tensor | None:
        """The K weights w of a weighting whose weighted losses' gradients in the losses are those of ``w * losses``
        with w fixed in the step, on the losses' device and in their dtype; None for the others. A
        one-backward step passes w into the backward of the raw losses as their output gradient, which gives
        the weighted sum's gradient without a product and a sum in the graph and their backward. A weighting with
        learnable parameters that gives step weights gives their gradients too (``learnable_grads``)."""
        return None

    def learnable_grads(self, losses: Tensor, weights: Tensor) -> list[Tensor]:
        """The gradients of the weighted losses' sum w.r.t. ``parameters()`` at the step's detached ``losses``,
        given the ``step_weights`` of the step, for a learnable weighting whose ``step_weights`` are not None."""
        raise NotImplementedError

    def observe(self, losses: Tensor, gram: Tensor) -> None:
        """Called once per step after the per-task gradients at the unperturbed parameters."""

    def end_epoch(self) -> None:
        """Called by the engine at each epoch boundary (DWA's losses are per epoch)."""

    def parameters(self) -> list[Tensor]:
        return []


class Wrapper(Stateful):
    """Owns one training step: which gradients are taken where, and what is aggregated.

    ``step`` uses the oracle's primitives (forward, per-task gradients, exact perturbation and
    restore, aggregation, norms over shards) and ends by writing the update into ``.grad``.
    """

    method_name: ClassVar[str]

    def step(self, oracle: GradientOracle) -> None:
        raise NotImplementedError
