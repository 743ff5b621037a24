"""GradDrop (Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign
Dropout", NeurIPS 2020), applied element-wise to the shared parameters' gradients."""

from __future__ import annotations

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
    """Update = sum_i (leak g_i + (1 - leak) M_i g_i) with, per coordinate, sign purity
    P = (1 + sum_i g_i / sum_i |g_i|) / 2, U ~ U(0, 1) and M_i = [P > U][g_i > 0] + [P < U][g_i < 0].

    The paper applies the mask to gradients w.r.t. activations (and sums over the batch); we apply it
    to parameter gradients (as common MTL libraries do), which is element-wise and so works on
    parameter shards unchanged. One leak for every task (the paper allows one per task).
    The uniforms come from a sub-generator seeded by one draw from ``generator``, so the step's
    generator advances by the same amount on every rank whatever its shard size (else from the
    method's own generator, seeded 0 at construction); shards therefore reuse one uniform stream.
    """

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
        generator = generator if generator is not None else self._default_generator
        seed = int(torch.randint(SEED_BOUND, (1,), generator=generator, device=generator.device))
        local = torch.Generator(device=grads.device).manual_seed(seed)
        uniform = torch.rand(grads.shape[1], generator=local, device=grads.device, dtype=grads.dtype)
        total = grads.sum(dim=0)
        magnitude = grads.abs().sum(dim=0)
        purity = 0.5 * (1.0 + total / magnitude.clamp_min(torch.finfo(grads.dtype).tiny))
        keep_positive = (purity > uniform) & (grads > 0)
        keep_negative = (purity < uniform) & (grads < 0)
        masked = grads * (keep_positive | keep_negative).to(grads.dtype)
        return (self.leak * grads + (1.0 - self.leak) * masked).sum(dim=0)
