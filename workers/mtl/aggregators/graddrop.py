"""GradDrop (Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign
Dropout", NeurIPS 2020): sign dropout on the gradients at the shared representation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from flatmtl.workers.mtl.base import Aggregator, GramReducer
from flatmtl.workers.mtl.registry import HParam, register

SEED_BOUND = 2**62


@register(
    "aggregator",
    "graddrop",
    description="Per coordinate, keep only the gradients of one sign, chosen with probability its sign purity.",
    paper="Chen et al. 2020, Just Pick a Sign: Gradient Sign Dropout (NeurIPS)",
    scale="sum: the kept gradients are summed, as in the paper (leak=1 gives the plain sum)",
    hparams=(HParam("leak", float, 0.0, "fraction of each task gradient that passes unmasked", low=0.0, high=1.0),),
)
class GradDrop(Aggregator):
    """Sign dropout (the paper's Algorithm 1). Per coordinate, with signals S_i, sign purity
    P = (1 + sum_i S_i / sum_i |S_i|) / 2, U ~ U(0, 1) and M_i = [P > U][S_i > 0] + [P < U][S_i < 0], the
    output is sum_i (leak + (1 - leak) M_i) R_i. One leak for every task (the paper allows one per task).

    In a step where the model declares its task heads (or the closure returns the representation), this
    runs where the paper puts it, on the gradients R_i w.r.t. the shared representation A: the signals are
    the batch sums of sign(A) R_i, so one mask per feature, and the masked sum goes back through the trunk
    in one backward. Called on a [K, P] matrix (the SAM wrappers' steps, and steps with no known
    representation), R_i = S_i are the parameter gradients, element-wise, so it runs on parameter shards
    unchanged; there only the sums over tasks matter, so the masks are never formed: the kept sum is the
    positive parts' sum where the positive sign is chosen and the negative parts' sum where the negative is.
    The uniforms come from a sub-generator seeded by one draw from ``generator``, so the step's
    generator advances by the same amount on every rank whatever its shard size (else from the
    method's own generator, seeded 0 at construction); shards therefore reuse one uniform stream.
    """

    uses_representation: ClassVar[bool] = True

    def __init__(self, leak: float) -> None:
        self.leak = leak
        self._default_generator = torch.Generator().manual_seed(0)

    def aggregate(
        self,
        grads: Tensor,
        *,
        losses: Tensor | None,
        generator: torch.Generator | None,
        reduce_gram: GramReducer,
    ) -> Tensor:
        total = grads.sum(dim=0)
        positive = grads.clamp_min(0.0).sum(dim=0)
        negative = total - positive
        purity = _purity(total, positive - negative)
        uniform = self._uniform(total, generator)
        # in place: a fresh [P] buffer costs more than the arithmetic on it
        kept = positive.mul_(purity > uniform).add_(negative.mul_(purity < uniform))
        return kept.mul_(1.0 - self.leak).add_(total, alpha=self.leak)

    def combine_representation(
        self,
        rows: Sequence[Tensor],
        values: Sequence[Tensor],
        *,
        losses: Tensor | None,
        generator: torch.Generator | None,
        reduce_gram: GramReducer,
    ) -> list[Tensor]:
        combined = []
        for row, value in zip(rows, values, strict=True):
            signals = (value.detach().sign() * row).sum(dim=1) if row.dim() > 2 else row
            kept = self._drop(signals, torch.ones_like(signals), generator)
            combined.append((kept.unsqueeze(1) * row if row.dim() > 2 else kept * row).sum(dim=0))
        return combined

    def _drop(self, signals: Tensor, grads: Tensor, generator: torch.Generator | None) -> Tensor:
        """[K, N]: each task's ``grads`` scaled by ``leak + (1 - leak) M_i`` from the ``signals``' purity."""
        uniform = self._uniform(signals[0], generator)
        purity = _purity(signals.sum(dim=0), signals.abs().sum(dim=0))
        keep_positive = (purity > uniform) & (signals > 0)
        keep_negative = (purity < uniform) & (signals < 0)
        masked = grads * (keep_positive | keep_negative).to(grads.dtype)
        return self.leak * grads + (1.0 - self.leak) * masked

    def _uniform(self, like: Tensor, generator: torch.Generator | None) -> Tensor:
        """One uniform per coordinate, from a sub-generator seeded by one draw from ``generator``."""
        generator = generator if generator is not None else self._default_generator
        seed = int(torch.randint(SEED_BOUND, (1,), generator=generator, device=generator.device))
        local = torch.Generator(device=like.device).manual_seed(seed)
        return torch.rand(like.shape, generator=local, device=like.device, dtype=like.dtype)


def _purity(total: Tensor, magnitude: Tensor) -> Tensor:
    """The sign purity ``(1 + sum_i S_i / sum_i |S_i|) / 2`` per coordinate (1/2 where every signal is zero)."""
    return 0.5 * (1.0 + total / magnitude.clamp_min(torch.finfo(total.dtype).tiny))
