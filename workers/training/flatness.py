"""Sharpness and flatness of a trained model, per task.

- rho-sharpness: ``max_{||e|| <= rho} L_k(w + e) - L_k(w)`` over all parameters, by projected normalized
  gradient ascent. The first iterate ``rho g / ||g||`` is SAM's first-order maximizer; later iterates move
  along the sphere toward a better one. Every visited point is a feasible ``e``, so the value is a lower bound
  on the true maximum that tightens with more steps.
- The largest-magnitude eigenvalue of each task loss's Hessian, by power iteration on Hessian-vector
  products (double backward through one retained graph; no Hessian is ever formed).
- Metrics inside an r-ball: the mean (and spread) of every task metric over random perturbations drawn
  uniformly from the ball of radius r around the trained parameters.

Parameters are moved by copying saved values back (never by subtracting), so the model ends bit-identical.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flatmtl.service.specs.train import TrainSpec
from flatmtl.workers import problems
from flatmtl.workers.training import checkpoint
from flatmtl.workers.training.config import RunOptions, model_name, split_references
from flatmtl.workers.training.data import model_input, prefetch, resolve_workers
from flatmtl.workers.training.evaluation import evaluate
from flatmtl.workers.training.rundir import RunDirectory

LossFn = Callable[[], Tensor]


def _flat(tensors: Sequence[Tensor | None], params: Sequence[Tensor]) -> Tensor:
    return torch.cat(
        [(torch.zeros_like(p) if t is None else t).reshape(-1) for t, p in zip(tensors, params, strict=True)]
    )


def _views(flat: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    return [part.view_as(p) for part, p in zip(flat.split([p.numel() for p in params]), params, strict=True)]


@contextmanager
def _saved(params: Sequence[Tensor]) -> Iterator[Callable[[Tensor], None]]:
    """Inside: ``move(offset)`` puts the parameters at saved + offset. On exit: the saved values, bit-exact."""
    saved = [p.detach().clone() for p in params]

    @torch.no_grad()
    def move(offset: Tensor) -> None:
        for param, value, delta in zip(params, saved, _views(offset, params), strict=True):
            param.copy_(value + delta)

    try:
        yield move
    finally:
        with torch.no_grad():
            for param, value in zip(params, saved, strict=True):
                param.copy_(value)


def _gradient(loss: Tensor, params: Sequence[Tensor], *, create_graph: bool = False) -> Tensor:
    grads = torch.autograd.grad(loss, list(params), allow_unused=True, create_graph=create_graph)
    return _flat(grads, params)


def rho_sharpness(loss_fn: LossFn, params: Sequence[Tensor], *, rho: float, steps: int = 5) -> float:
    """The largest loss increase found within the rho-ball (>= 0: the centre itself is feasible)."""
    with torch.no_grad():
        base = float(loss_fn())
    best = base
    offset = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
    with _saved(params) as move:
        for _ in range(steps):
            move(offset)
            loss = loss_fn()
            best = max(best, float(loss.detach()))
            grad = _gradient(loss, params)
            norm = grad.norm()
            if norm == 0:
                break
            offset = offset + rho * grad / norm
            offset = offset * min(1.0, rho / float(offset.norm()))
        move(offset)
        with torch.no_grad():
            best = max(best, float(loss_fn()))
    return best - base


@dataclass(frozen=True)
class Eigenvalue:
    value: float
    iterations: int
    converged: bool


def top_hessian_eigenvalue(
    loss_fn: LossFn,
    params: Sequence[Tensor],
    *,
    iterations: int = 50,
    tolerance: float = 1e-4,
    generator: torch.Generator | None = None,
) -> Eigenvalue:
    """The Hessian eigenvalue of largest magnitude, by power iteration: ``v <- Hv / ||Hv||``, Rayleigh
    quotient ``v.Hv``; stops when it changes by less than ``tolerance`` relative to its size."""
    loss = loss_fn()
    grad = _gradient(loss, params, create_graph=True)
    vector = gaussian(grad.numel(), generator=generator, like=params[0])
    vector = vector / vector.norm()
    value = 0.0
    if not grad.requires_grad:
        return Eigenvalue(0.0, 0, True)
    for iteration in range(1, iterations + 1):
        product = _flat(
            torch.autograd.grad(grad, list(params), grad_outputs=vector, retain_graph=True, allow_unused=True), params
        )
        previous, value = value, float(vector @ product)
        norm = product.norm()
        if norm == 0:
            return Eigenvalue(0.0, iteration, True)
        vector = product / norm
        if iteration > 1 and abs(value - previous) <= tolerance * max(abs(value), 1e-12):
            return Eigenvalue(value, iteration, True)
    return Eigenvalue(value, iterations, False)


def gaussian(numel: int, *, generator: torch.Generator | None, like: Tensor) -> Tensor:
    """A standard normal vector drawn on the generator's device (a CPU generator cannot draw on CUDA), then moved
    to ``like``'s, so the draws depend on the seed alone, not on where the model lives."""
    device = like.device if generator is None else generator.device
    return torch.randn(numel, generator=generator, dtype=like.dtype, device=device).to(like.device)


def ball_direction(numel: int, radius: float, *, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    """A point drawn uniformly from the ball of ``radius`` in R^numel (Gaussian direction, radius r U^(1/n))."""
    direction = torch.randn(numel, generator=generator, dtype=dtype)
    scale = radius * float(torch.rand((), generator=generator, dtype=torch.float64)) ** (1.0 / numel)
    return direction * (scale / direction.norm())


def perturbed_metrics(
    evaluate_fn: Callable[[], dict[str, float]],
    params: Sequence[Tensor],
    *,
    radius: float,
    draws: int,
    generator: torch.Generator,
) -> tuple[dict[str, float], dict[str, float]]:
    """(mean, standard deviation) over ``draws`` uniform perturbations in the r-ball of every metric."""
    numel = sum(p.numel() for p in params)
    results: list[dict[str, float]] = []
    with _saved(params) as move:
        for _ in range(draws):
            offset = ball_direction(numel, radius, generator=generator, dtype=params[0].dtype)
            move(offset.to(params[0].device))
            results.append(evaluate_fn())
    keys = results[0].keys()
    values = {key: np.array([r[key] for r in results], dtype=float) for key in keys}
    return {k: float(v.mean()) for k, v in values.items()}, {k: float(v.std()) for k, v in values.items()}


@dataclass(frozen=True)
class FlatnessSettings:
    split: str = "test"
    samples: int = 512
    rho: float = 0.05
    ascent_steps: int = 5
    iterations: int = 20
    tolerance: float = 1e-3
    radius: float = 0.05
    draws: int = 5
    seed: int = 0
    batch_size: int = 256
    loader_workers: int | None = None
    """Processes collating the batches (0: a thread); None: the run's own setting, else as training chooses."""


def evaluate_run(
    run_dir: Path,
    settings: FlatnessSettings,
    *,
    checkpoint_path: Path | None = None,
    device: torch.device = torch.device("cpu"),  # noqa: B008 (an immutable default)
) -> dict[str, Any]:
    """Every measure on the run's checkpoint (``latest`` by default), on ``device``, written to ``flatness.json``.

    Losses are means over a fixed, seeded subset of ``samples`` items of the split (the model in eval mode);
    the r-ball metrics use the whole split. Random draws come from a CPU generator seeded by ``settings.seed``,
    so they are the same on every device. Batches are collated as in training (``loader_workers``), so the
    loss batches, held on the device for every ascent and power iteration, equal those of a thread.
    """
    run = RunDirectory(run_dir)
    spec = TrainSpec.model_validate(run.read_json(run.config))
    options = RunOptions(**run.read_json(run.options))
    dtype = getattr(torch, options.dtype)
    problem_options, _ = split_references(spec)
    problem = problems.build(spec.problem, **problem_options)
    model = problem.model(model_name(spec), **spec.model_options).to(device, dtype)
    path = checkpoint_path or run.latest
    model.load_state_dict(checkpoint.load(path)["model"])
    model.eval()

    data = problem.dataset(settings.split)
    requested = spec.loader_workers if settings.loader_workers is None else settings.loader_workers
    workers = resolve_workers(requested, data, device, None)
    size = len(data)  # type: ignore[arg-type]
    order = np.random.default_rng(settings.seed).permutation(size)[: min(settings.samples, size)]
    chunks = enumerate(
        order[start : start + settings.batch_size] for start in range(0, len(order), settings.batch_size)
    )
    with prefetch(data, chunks, device, dtype, workers) as loaded:
        batches = [batch for _, _, batch in loaded]

    def task_loss(task: int) -> LossFn:
        def loss() -> Tensor:
            total = sum(
                problem.losses(model(model_input(x)), targets)[task] * len(targets[task]) for x, targets in batches
            )
            return total / len(order)

        return loss

    shared = model.shared_parameters()
    heads = model.task_parameters()
    generator = torch.Generator().manual_seed(settings.seed)
    tasks: dict[str, Any] = {}
    for index, name in enumerate(problem.task_names):
        params = [*shared, *heads[index]]
        loss_fn = task_loss(index)
        with torch.no_grad():
            loss = float(loss_fn())
        eigen = top_hessian_eigenvalue(
            loss_fn, params, iterations=settings.iterations, tolerance=settings.tolerance, generator=generator
        )
        tasks[name] = {
            "loss": loss,
            "rho_sharpness": rho_sharpness(loss_fn, params, rho=settings.rho, steps=settings.ascent_steps),
            "hessian_top_eigenvalue": eigen.value,
            "hessian_iterations": eigen.iterations,
            "hessian_converged": eigen.converged,
        }

    def score() -> dict[str, float]:
        return evaluate(
            problem,
            model,
            settings.split,
            device=device,
            dtype=dtype,
            batch_size=settings.batch_size,
            loader_workers=workers,
        )

    unperturbed = score()
    mean, spread = perturbed_metrics(
        score, list(model.parameters()), radius=settings.radius, draws=settings.draws, generator=generator
    )
    report = {
        "checkpoint": str(path),
        "settings": settings.__dict__,
        "tasks": tasks,
        "metrics": unperturbed,
        "perturbed_mean": mean,
        "perturbed_std": spread,
        "perturbed_drop": {k: unperturbed[k] - mean[k] for k in unperturbed if math.isfinite(unperturbed[k])},
    }
    run.write_json(run.root / "flatness.json", report)
    return report
