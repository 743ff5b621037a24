"""Nash-MTL's weights: our Newton solver versus the authors' approach, side by side on the same Grams.

The authors (github.com/AvivNavon/nash-mtl, ``NashMTL.solve_optimization``) find ``alpha`` with
``G G^T alpha = 1/alpha`` by a concave-convex procedure. They pass cvxpy ``M = G G^T / s`` with
``s = ||G G^T||_F`` for conditioning and scale back inside the program, so it solves the raw equation:
``phi_i(a) = log a_i + log (M a)_i + log s`` must be 0 for every task; each iteration linearizes the
concave ``sum_i phi_i`` at the previous iterate ``a_t`` and solves the convex program

    min_a  sum(M a) + grad phi(a_t)^T a / s   s.t.  phi_i(a) >= 0,  a >= 0

up to 20 times. After each solve they test the iterate it started from, ``a_t``: they stop when
``||M a_t - 1/a_t|| < 1e-3`` (with the scaled ``M``, so this seldom fires), when the solve fails or
when the new iterate moved less than 1e-6 from ``a_t``, and then return ``a_t``, not the new iterate;
in practice two solves per step. ``ConvexConcaveNash`` below is ours, written from that description,
with their stopping rule and cap. One difference makes it faster than theirs: their program takes
``1/a_t`` and products of parameters, which is not DPP, so cvxpy compiles it again at every solve;
here the linearization is one vector parameter and ``log s`` another, so the problem is compiled once
per K and only the solves are timed. They use ECOS (max_iters=100), which recent cvxpy no longer
installs; CLARABEL, its successor as cvxpy's default for exponential cones, is the default here.

Ours is ``nash_mtl`` with ``normalize_gram=False``, which solves the same equation (the default
differs only by the factor ``||G G^T||_F^(1/2)``), through the public path: a new aggregator per
call, input validation included. Cold: the authors start from ones, ours from the orthogonal-gradient
solution. Warm: both start from their answer for the previous step's Gram (the gradients moved by
5%), as both do in training. Times are the best of the same number of runs for both. ``1 solve`` is
one conic solve of the first iteration on its own: the floor of any CCCP, whatever its stopping rule.

    python benchmarks/nash_mtl_solver.py [--seeds 5] [--tasks 2 5 14] [--solver CLARABEL]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from flatmtl.workers import mtl


class ConvexConcaveNash:
    """The authors' CCCP, one DPP cvxpy problem per K: the scaled Gram, ``log s`` and the
    linearization are parameters."""

    def __init__(self, num_tasks: int, solver: str, iterations: int = 20) -> None:
        import cvxpy as cp

        self.solver = solver
        self.iterations = iterations
        self.alpha = cp.Variable(num_tasks, nonneg=True)
        self.gram = cp.Parameter((num_tasks, num_tasks))
        self.log_scale = cp.Parameter()
        self.linearization = cp.Parameter(num_tasks)
        improvements = self.gram @ self.alpha
        constraints = [cp.log(self.alpha[i]) + cp.log(improvements[i]) + self.log_scale >= 0 for i in range(num_tasks)]
        # The linearization's constant term is dropped: it does not move the minimizer.
        objective = cp.Minimize(cp.sum(improvements) + self.linearization @ self.alpha)
        self.problem = cp.Problem(objective, constraints)
        self.solves = 0
        self.scale = 1.0

    def weights(self, gram: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
        """``alpha`` for the raw Gram ``G G^T``, from ``start`` (the authors' first start is ones)."""
        scaled = self.set_gram(gram)
        alpha = np.ones(gram.shape[0]) if start is None else start
        self.solves = 0
        for _ in range(self.iterations):
            self.solve_from(alpha)
            new = self.alpha.value
            if (
                new is None
                or np.linalg.norm(scaled @ alpha - 1.0 / (alpha + 1e-10)) < 1e-3
                or np.linalg.norm(new - alpha) < 1e-6
            ):
                break
            alpha = np.asarray(new, dtype=np.float64)
        return alpha

    def set_gram(self, gram: np.ndarray) -> np.ndarray:
        """Sets the parameters for ``gram``; returns the scaled Gram ``M``."""
        self.scale = float(np.linalg.norm(gram))
        self.gram.value = gram / self.scale
        self.log_scale.value = np.log(self.scale)
        return self.gram.value

    def solve_from(self, alpha: np.ndarray) -> None:
        """One convex program, linearized at ``alpha``; a failed solve leaves no iterate (the authors
        catch the error and stop)."""
        from cvxpy.error import SolverError

        scaled = self.gram.value
        self.linearization.value = (1.0 / alpha + (1.0 / (scaled @ alpha)) @ scaled) / self.scale
        self.solves += 1
        try:
            self.problem.solve(solver=self.solver)
        except SolverError:
            self.alpha.value = None


def random_grams(num_tasks: int, seed: int, dim: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Grams of correlated task gradients (a shared component plus task-specific noise, unequal norms)
    at one step and at the next, after a small change of the gradients (for the warm-started solve)."""
    generator = torch.Generator().manual_seed(seed)
    shared = torch.randn(1, dim, generator=generator, dtype=torch.float64)
    grads = 0.5 * shared + torch.randn(num_tasks, dim, generator=generator, dtype=torch.float64)
    grads = grads * torch.rand(num_tasks, 1, generator=generator, dtype=torch.float64).add(0.1)
    moved = grads + 0.05 * grads.norm(dim=1, keepdim=True) / dim**0.5 * torch.randn(grads.shape, generator=generator)
    return grads @ grads.T, moved @ moved.T


def newton_weights(gram: torch.Tensor, state: dict[str, object] | None = None) -> torch.Tensor:
    """Our weights through the public path: a new aggregator (cold) or one restored to ``state`` (warm)."""
    aggregator = mtl.aggregator("nash_mtl", normalize_gram=False)
    if state is not None:
        aggregator.load_state_dict(state)
    return aggregator.weights(gram)


def seconds(run: Callable[[], object], repeats: int) -> float:
    """Best of ``repeats`` wall times: the least disturbed by other processes on a shared machine."""
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        timings.append(time.perf_counter() - started)
    return min(timings)


def relative_difference(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 5, 14])
    parser.add_argument("--solver", default="CLARABEL", help="cvxpy solver with exponential cones (authors: ECOS)")
    parser.add_argument("--repeats", type=int, default=10, help="runs per timing, the same for both solvers")
    args = parser.parse_args()

    print(
        f"{'K':>3} {'seed':>4} | cold: {'cccp ms':>8} {'solves':>6} {'ours ms':>8} {'ratio':>6} {'rel |dw|':>8} "
        f"| warm: {'cccp ms':>8} {'solves':>6} {'ours ms':>8} {'ratio':>6} {'rel |dw|':>8} | {'1 solve ms':>10}"
    )
    ratios: dict[tuple[str, int], list[float]] = {}
    floor_ratios: list[float] = []
    differences: list[float] = []
    for num_tasks in args.tasks:
        reference = ConvexConcaveNash(num_tasks, args.solver)
        for seed in range(args.seeds):
            gram, next_gram = random_grams(num_tasks, seed)
            raw, next_raw = gram.numpy(), next_gram.numpy()
            theirs = reference.weights(raw)
            cold_solves = reference.solves
            aggregator = mtl.aggregator("nash_mtl", normalize_gram=False)
            ours = aggregator.weights(gram).numpy()
            state = aggregator.state_dict()
            theirs_next = reference.weights(next_raw, theirs)
            warm_solves = reference.solves
            ours_next = newton_weights(next_gram, state).numpy()
            cold = (
                seconds(partial(reference.weights, raw), args.repeats),
                seconds(partial(newton_weights, gram), args.repeats),
            )
            warm = (
                seconds(partial(reference.weights, next_raw, theirs), args.repeats),
                seconds(partial(newton_weights, next_gram, state), args.repeats),
            )
            reference.set_gram(raw)
            one_solve = seconds(partial(reference.solve_from, np.ones(num_tasks)), args.repeats)
            ratios.setdefault(("cold", num_tasks), []).append(cold[0] / cold[1])
            ratios.setdefault(("warm", num_tasks), []).append(warm[0] / warm[1])
            floor_ratios.append(one_solve / max(cold[1], warm[1]))
            difference = (relative_difference(ours, theirs), relative_difference(ours_next, theirs_next))
            differences.extend(difference)
            print(
                f"{num_tasks:>3} {seed:>4} | {1e3 * cold[0]:>14.2f} {cold_solves:>6} {1e3 * cold[1]:>8.3f} "
                f"{cold[0] / cold[1]:>5.0f}x {difference[0]:>8.1e} | {1e3 * warm[0]:>14.2f} {warm_solves:>6} "
                f"{1e3 * warm[1]:>8.3f} {warm[0] / warm[1]:>5.0f}x {difference[1]:>8.1e} | {1e3 * one_solve:>10.2f}"
            )
    for (start, num_tasks), values in ratios.items():
        print(
            f"{start} start, K={num_tasks:>2}: time ratio cccp/ours min {min(values):.0f}x, "
            f"median {statistics.median(values):.0f}x (target >= 10x)"
        )
    print(
        f"one conic solve / ours (slower of cold and warm): min {min(floor_ratios):.0f}x, "
        f"median {statistics.median(floor_ratios):.0f}x"
    )
    print(f"largest relative weight difference: {max(differences):.1e} (target <= 1e-3)")


if __name__ == "__main__":
    main()
