"""Random task weights on the simplex, as defined by the random weighting paper (Lin et al., "Reasonable
Effectiveness of Random Weighting: A Litmus Test for Multi-Task Learning", TMLR 2022, Sec. 5.4).

Shared by RLW (loss weights) and RGW (gradient weights). Each distribution samples lambda~ and maps it
onto the simplex with the paper's normalization f, so E[lambda] = (1/K, ..., 1/K) for all five:

- ``normal``: lambda~ ~ N(0, I), f = softmax (the paper's default).
- ``uniform``: lambda~ ~ U(0, 1)^K, f = softmax.
- ``dirichlet``: lambda ~ Dir(1, ..., 1), f = identity (drawn as normalized Exp(1) variables).
- ``bernoulli``: lambda~ ~ Bernoulli(1/2)^K, f = lambda~ / sum(lambda~). The all-zero draw has no
  normalization; it is redrawn, which keeps the distribution exchangeable and E[lambda] uniform.
- ``constrained_bernoulli``: Bernoulli(1/2) draws constrained to sum to 1, i.e. one task chosen
  uniformly gets weight 1 (the paper's c-Bernoulli: one task updates the model per step).

Every draw uses the given generator (never the global RNG), on the generator's device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flatmtl.workers.mtl.errors import MethodError

DISTRIBUTIONS: tuple[str, ...] = ("normal", "uniform", "dirichlet", "bernoulli", "constrained_bernoulli")


def sample_simplex_weights(
    distribution: str,
    num_tasks: int,
    generator: torch.Generator,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """K weights >= 0 summing to 1 from ``distribution`` (see the module docstring)."""
    if num_tasks < 1:
        raise MethodError(f"num_tasks={num_tasks} is not allowed; allowed: an integer >= 1")
    on = generator.device
    shape = (num_tasks,)
    if distribution == "normal":
        weights = torch.softmax(torch.randn(shape, generator=generator, device=on, dtype=torch.float64), dim=0)
    elif distribution == "uniform":
        weights = torch.softmax(torch.rand(shape, generator=generator, device=on, dtype=torch.float64), dim=0)
    elif distribution == "dirichlet":
        gammas = torch.empty(shape, device=on, dtype=torch.float64).exponential_(1.0, generator=generator)
        weights = gammas / gammas.sum()
    elif distribution == "bernoulli":
        draws = torch.zeros(shape, device=on, dtype=torch.float64)
        while not draws.any():
            draws = (torch.rand(shape, generator=generator, device=on, dtype=torch.float64) < 0.5).double()
        weights = draws / draws.sum()
    elif distribution == "constrained_bernoulli":
        chosen = torch.randint(num_tasks, (1,), generator=generator, device=on)
        weights = torch.zeros(shape, device=on, dtype=torch.float64).index_fill_(0, chosen, 1.0)
    else:
        raise MethodError(f"distribution={distribution!r} is not allowed; allowed: {', '.join(DISTRIBUTIONS)}")
    return weights.to(device=device if device is not None else on, dtype=dtype)
