"""Optimizes a toy problem with one aggregator x wrapper through FlatMTL's real step.

The 2-D point is the only shared parameter and the tasks own nothing, so the step sees exactly the
two objectives' gradients; Adam then moves the point, as in the toy studies of CAGrad and SAMO.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from flatmtl.workers import mtl
from flatmtl.workers.mtl import diagnostics
from flatmtl.workers.toy.problems import PROBLEMS, ToyProblem, distance_to_polyline


@dataclass(frozen=True)
class RunSpec:
    """One trajectory: which problem, which methods, which starting point (an index into ``starts``);
    ``rho`` is the radius given to every wrapper radius (see ``wrapper_hparams``)."""

    problem: str
    aggregator: str
    wrapper: str
    start: int
    steps: int
    seed: int
    rho: float


@dataclass(frozen=True)
class RunResult:
    spec: RunSpec
    trajectory: Tensor
    objectives: tuple[float, float]
    distance_to_pareto: float
    final_cosine: float

    def row(self) -> dict[str, object]:
        """The JSON/markdown row: where the run ended and how good that is."""
        problem = PROBLEMS[self.spec.problem]
        final = self.trajectory[-1]
        return {
            "problem": self.spec.problem,
            "aggregator": self.spec.aggregator,
            "wrapper": self.spec.wrapper,
            "start": list(problem.starts[self.spec.start]),
            "final": [float(final[0]), float(final[1])],
            "f1": self.objectives[0],
            "f2": self.objectives[1],
            "mean_f": (self.objectives[0] + self.objectives[1]) / 2,
            "distance_to_pareto": self.distance_to_pareto,
            "final_cosine": self.final_cosine,
        }


def wrapper_hparams(wrapper: str, rho: float) -> dict[str, float]:
    """The toy's radius for every radius a wrapper has (``rho``, and ``rho_*`` such as F-MTL's
    ``rho_shared``); other hyper-parameters keep their defaults. The papers' radii are tuned for
    networks with millions of weights, far too small to show on a plane."""
    names = [hp.name for hp in mtl.spec("wrapper", wrapper).hparams]
    return {name: rho for name in names if name == "rho" or name.startswith("rho_")}


def run(spec: RunSpec) -> RunResult:
    """Optimize from one starting point; deterministic for a given spec."""
    torch.set_num_threads(1)
    problem = PROBLEMS[spec.problem]
    point = nn.Parameter(torch.tensor(problem.starts[spec.start], dtype=torch.float64))
    step = mtl.MTLStep(
        mtl.ParameterSplit([point], [[], []]),
        aggregator=spec.aggregator,
        wrapper=spec.wrapper,
        wrapper_hparams=wrapper_hparams(spec.wrapper, spec.rho),
        seed=spec.seed,
    )
    optimizer = torch.optim.Adam([point], lr=problem.lr)
    trajectory = [point.detach().clone()]
    gram = None
    for index in range(spec.steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_rate(problem.lr, index, spec.steps)
        optimizer.zero_grad(set_to_none=True)
        record = step(lambda: problem.objectives(point))
        gram = record.gram
        optimizer.step()
        project(point, problem)
        trajectory.append(point.detach().clone())
    final = trajectory[-1]
    values = problem.objectives(final)
    cosine = 1.0 if gram is None else diagnostics.summarize(gram).cosine_min
    return RunResult(
        spec=spec,
        trajectory=torch.stack(trajectory),
        objectives=(float(values[0]), float(values[1])),
        distance_to_pareto=distance_to_polyline(final, problem.pareto_set()),
        final_cosine=cosine,
    )


def cosine_rate(base: float, index: int, steps: int) -> float:
    """Cosine decay from ``base`` to 1% of it, so the end point settles instead of rattling at Adam's step size."""
    progress = index / max(steps - 1, 1)
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def project(point: Tensor, problem: ToyProblem) -> None:
    """Clamp the point into the problem's feasible box, if it has one."""
    if problem.box is None:
        return
    for axis, (low, high) in enumerate(problem.box):
        point[axis].clamp_(low, high)
