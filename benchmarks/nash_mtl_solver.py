"""Nash-MTL's weights: our Newton solver versus the authors' approach, side by side on the same Grams.

The authors find ``alpha`` with ``M alpha = 1/alpha`` (``M`` the Gram divided by its Frobenius norm)
by a concave-convex procedure: ``phi_i(a) = log a_i + log (M a)_i`` must be 0 for every task; each
iteration linearizes the concave ``sum_i phi_i`` at the previous iterate and solves the convex program

    min_a  sum(M a) + grad phi(a_prev)^T a   s.t.  phi_i(a) >= 0,  a >= 0

with cvxpy, up to 20 times, stopping when ``||M a - 1/a|| < 1e-3`` or the iterate stops moving. The
implementation below is ours, written from that description. Our solver (``nash_mtl``) runs Newton
on the strictly convex ``0.5 a^T M a - sum log a_i``. Cold: the authors start from ones, ours from
the orthogonal-gradient solution. Warm: both start from their answer for the previous step's Gram
(the gradients moved by 5%), as both do in training. The cvxpy problem is built once per K and only
solves are timed (best of several runs), as in training where it is reused across steps.

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

from workers import mtl


class ConvexConcaveNash:
    """The authors' CCCP, one cvxpy problem per K with the Gram and the linearization point as parameters."""

    def __init__(self, num_tasks: int, solver: str, iterations: int = 20) -> None:
        import cvxpy as cp

        self.solver = solver
        self.iterations = iterations
        self.alpha = cp.Variable(num_tasks, nonneg=True)
        self.gram = cp.Parameter((num_tasks, num_tasks))
        self.linearization = cp.Parameter(num_tasks)
        improvements = self.gram @ self.alpha
        constraints = [cp.log(self.alpha[i]) + cp.log(improvements[i]) >= 0 for i in range(num_tasks)]
        # The linearization's constant term is dropped: it does not move the minimizer, and leaving it out
        # keeps the problem DPP, so cvxpy reuses its compiled form across solves.
        objective = cp.Minimize(cp.sum(improvements) + self.linearization @ self.alpha)
        self.problem = cp.Problem(objective, constraints)

    def weights(self, gram: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
        self.gram.value = gram
        alpha = np.ones(gram.shape[0]) if start is None else start
        for _ in range(self.iterations):
            self.linearization.value = 1.0 / alpha + (1.0 / (gram @ alpha)) @ gram
            self.problem.solve(solver=self.solver)
            if self.alpha.value is None:
                break
            moved = float(np.linalg.norm(self.alpha.value - alpha))
            alpha = np.asarray(self.alpha.value, dtype=np.float64)
            if np.linalg.norm(gram @ alpha - 1.0 / alpha) < 1e-3 or moved < 1e-6:
                break
        return alpha


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
    aggregator = mtl.aggregator("nash_mtl")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 5, 14])
    parser.add_argument("--solver", default="CLARABEL", help="cvxpy solver with exponential cones")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    print(
        f"{'K':>3} {'seed':>4} | cold: {'cccp ms':>8} {'ours ms':>8} {'ratio':>6} {'max|dw|':>8} "
        f"| warm: {'cccp ms':>8} {'ours ms':>8} {'ratio':>6} {'max|dw|':>8}"
    )
    cold_ratios, warm_ratios = [], []
    for num_tasks in args.tasks:
        reference = ConvexConcaveNash(num_tasks, args.solver)
        for seed in range(args.seeds):
            gram, next_gram = random_grams(num_tasks, seed)
            normalized = (gram / torch.linalg.matrix_norm(gram)).numpy()
            next_normalized = (next_gram / torch.linalg.matrix_norm(next_gram)).numpy()
            theirs = reference.weights(normalized)
            aggregator = mtl.aggregator("nash_mtl")
            ours = aggregator.weights(gram).numpy()
            state = aggregator.state_dict()
            theirs_next = reference.weights(next_normalized, theirs)
            ours_next = newton_weights(next_gram, state).numpy()
            cold = (
                seconds(partial(reference.weights, normalized), args.repeats),
                seconds(partial(newton_weights, gram), 5 * args.repeats),
            )
            warm = (
                seconds(partial(reference.weights, next_normalized, theirs), args.repeats),
                seconds(partial(newton_weights, next_gram, state), 5 * args.repeats),
            )
            cold_ratios.append(cold[0] / cold[1])
            warm_ratios.append(warm[0] / warm[1])
            print(
                f"{num_tasks:>3} {seed:>4} | {1e3 * cold[0]:>14.2f} {1e3 * cold[1]:>8.3f} {cold[0] / cold[1]:>5.0f}x "
                f"{float(np.abs(ours - theirs).max()):>8.1e} | {1e3 * warm[0]:>14.2f} {1e3 * warm[1]:>8.3f} "
                f"{warm[0] / warm[1]:>5.0f}x {float(np.abs(ours_next - theirs_next).max()):>8.1e}"
            )
    for name, ratios in (("cold", cold_ratios), ("warm", warm_ratios)):
        print(
            f"{name} start, time ratio cccp/ours: min {min(ratios):.0f}x, median {statistics.median(ratios):.0f}x "
            "(target >= 10x)"
        )


if __name__ == "__main__":
    main()
