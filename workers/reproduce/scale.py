"""How big the reproduction is: data, epochs, seeds, methods and grids, in one frozen record per scale.

The papers train on 120K/20K canvases for 100+ epochs on GPUs; every scale here is a stated reduction of
that, written into the report next to the results. ``quick`` keeps the whole pipeline alive in CI (one
seed, a few hundred samples, one epoch, a subset of methods, one trial per sweep); ``reduced`` is the full
design with fewer samples and epochs, for a shared or slower machine; ``full``'s engine runs were designed to
fit about 25 minutes on two idle cores, and its sweeps (claim 9, 25 Ray Tune trials through the service) add
their own time; the report states what each part measured.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

PAPER_SIZES = "120,000 training and 20,000 test canvases, 100+ epochs (F-MTL, random weighting papers)"


@dataclass(frozen=True)
class Scale:
    """Sizes of every experiment. Grids list values; the first seed is the one single-seed runs use."""

    name: str
    seeds: tuple[int, ...]
    train_size: int
    test_size: int
    batch_size: int
    epochs: int
    conflict_epochs: int
    lr: float
    aggregators: tuple[str, ...]
    distributions: tuple[str, ...]
    optimizer_methods: tuple[str, ...]
    adam_lrs: tuple[float, ...]
    sgd_lrs: tuple[float, ...]
    sgd_momentum: float
    fmtl_rhos: tuple[float, ...]
    samo_rhos: tuple[float, ...]
    samo_alphas: tuple[float, ...]
    cost_repeats: int
    cost_batch_size: int
    gradient_samples: int
    gradient_batches: int
    ball_radii: tuple[float, ...]
    ball_draws: int
    flatness_samples: int
    toy_steps: int
    toy_rhos: tuple[float, ...]
    sweep_timeout_s: float
    eval_batch_size: int = 500
    workers: int = 2

    @property
    def steps_per_epoch(self) -> int:
        return self.train_size // self.batch_size

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_workers(self, workers: int) -> Scale:
        return replace(self, workers=workers)


QUICK = Scale(
    name="quick",
    seeds=(0,),
    train_size=256,
    test_size=128,
    batch_size=64,
    epochs=1,
    conflict_epochs=1,
    lr=1e-3,
    aggregators=("mgda",),
    distributions=("normal", "dirichlet"),
    optimizer_methods=("ew", "pcgrad"),
    adam_lrs=(1e-3,),
    sgd_lrs=(0.01,),
    sgd_momentum=0.9,
    fmtl_rhos=(0.05,),
    samo_rhos=(1e-3,),
    samo_alphas=(0.5,),
    cost_repeats=2,
    cost_batch_size=64,
    gradient_samples=4,
    gradient_batches=1,
    ball_radii=(0.0, 2.0),
    ball_draws=1,
    flatness_samples=64,
    toy_steps=40,
    toy_rhos=(0.3, 1.5),
    sweep_timeout_s=600.0,
    eval_batch_size=128,
)

FULL = Scale(
    name="full",
    seeds=(0, 1, 2),
    train_size=2560,
    test_size=1000,
    batch_size=128,
    epochs=6,
    conflict_epochs=10,
    lr=1e-3,
    aggregators=("mgda", "pcgrad", "cagrad", "imtl_g", "fairgrad"),
    distributions=("normal", "uniform", "dirichlet", "bernoulli", "constrained_bernoulli"),
    optimizer_methods=("ew", "uw", "rlw", "pcgrad", "cagrad"),
    adam_lrs=(1e-3,),
    sgd_lrs=(0.03, 0.1),
    sgd_momentum=0.9,
    fmtl_rhos=(0.01, 0.05, 0.2, 0.5),
    samo_rhos=(1e-4, 1e-3, 1e-2),
    samo_alphas=(0.1, 0.5, 0.9),
    cost_repeats=15,
    cost_batch_size=128,
    gradient_samples=8,
    gradient_batches=4,
    ball_radii=(0.0, 1.0, 2.0, 4.0, 8.0),
    ball_draws=5,
    flatness_samples=512,
    toy_steps=100,
    toy_rhos=(0.3, 0.6, 1.0, 1.5, 2.0),
    sweep_timeout_s=5400.0,
)

REDUCED = replace(FULL, name="reduced", train_size=1920, epochs=5, conflict_epochs=8, cost_repeats=9)

SCALES = {scale.name: scale for scale in (QUICK, REDUCED, FULL)}
