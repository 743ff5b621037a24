"""Claim 7: on SAMO's two-objective toy, LS converges to a sharp Pareto point, LS + SAM (perturbation along
the mean-loss gradient, i.e. G-SAM) to a flat one (SAMO paper, Section 6.1, Figure 1).

The trajectories come from the toy demo (``flatmtl.workers.toy``: the product's step, Adam with a cosine-decayed
rate, the feasible box). The paper gives neither radius nor learning rate, so the demo's default radius
is the headline and a small grid of radii shows where the behaviour changes. Sharpness of an end point is
the spectral norm of the Hessian of f1 + f2 there (the LS objective), by autograd.
"""

from __future__ import annotations

import torch

from flatmtl.workers.reproduce.claims.base import ClaimResult, Context
from flatmtl.workers.reproduce.markdown import table
from flatmtl.workers.reproduce.runs import Results, RunRequest
from flatmtl.workers.reproduce.verdict import Check

NUMBER = 7
TITLE = "Two-objective toy: LS vs LS + SAM trajectories"
PROBLEM = "samo"
PARETO_TOLERANCE = 0.05
FLATTER = 0.9
"""An end point is flatter when its sharpness is below this fraction of LS's: same-basin jitter does not count."""
START = 0
"""Index of (-6, 1), the start of the paper's Figure 1."""


def requests(context: Context) -> list[RunRequest]:
    return []


def sharpness(point: torch.Tensor) -> float:
    """Largest |eigenvalue| of the Hessian of f1 + f2 at ``point``."""
    from flatmtl.workers.toy.problems import PROBLEMS

    problem = PROBLEMS[PROBLEM]
    hessian = torch.autograd.functional.hessian(lambda x: problem.objectives(x).sum(), point.double())
    return float(torch.linalg.eigvalsh(hessian).abs().max())


def analyze(context: Context, results: Results) -> ClaimResult:
    from flatmtl.workers.toy.problems import PROBLEMS
    from flatmtl.workers.toy.report import plot_problem
    from flatmtl.workers.toy.trajectory import RunSpec, run

    scale = context.scale
    problem = PROBLEMS[PROBLEM]
    default = problem.rho
    radii = tuple(sorted({default, *scale.toy_rhos}))
    context.echo(f"claim 7: toy trajectories at radii {list(radii)}")
    runs = {
        (wrapper, rho, start): run(RunSpec(PROBLEM, "mean", wrapper, start, scale.toy_steps, 0, rho))
        for rho in radii
        for wrapper in ("none", "g_sam")
        for start in range(len(problem.starts))
    }
    body, numbers = [], []
    for (wrapper, rho, start), result in runs.items():
        if wrapper == "none" and rho != default:
            continue  # LS has no radius: one row per start
        final = result.trajectory[-1]
        row = {
            "method": "LS" if wrapper == "none" else "LS + SAM",
            "rho": None if wrapper == "none" else rho,
            "start": list(problem.starts[start]),
            "final": [float(final[0]), float(final[1])],
            "distance_to_pareto": result.distance_to_pareto,
            "sharpness": sharpness(final),
        }
        numbers.append(row)
        body.append(
            [
                row["method"],
                "-" if row["rho"] is None else f"{rho:g}",
                f"({problem.starts[start][0]:g}, {problem.starts[start][1]:g})",
                f"({row['final'][0]:.3f}, {row['final'][1]:.3f})",
                f"{row['distance_to_pareto']:.4f}",
                f"{row['sharpness']:.3f}",
            ]
        )
    ls = runs[("none", default, START)]
    ls_sharp = sharpness(ls.trajectory[-1])
    sam = {rho: runs[("g_sam", rho, START)] for rho in radii}
    flatter = [rho for rho in radii if sharpness(sam[rho].trajectory[-1]) < FLATTER * ls_sharp]
    checks = [
        Check(
            f"from (-6, 1) LS and LS + SAM (demo radius {default:g}) both reach the Pareto set "
            f"(distance <= {PARETO_TOLERANCE})",
            ls.distance_to_pareto <= PARETO_TOLERANCE and sam[default].distance_to_pareto <= PARETO_TOLERANCE,
            f"LS {ls.distance_to_pareto:.4f}, LS + SAM {sam[default].distance_to_pareto:.4f}",
        ),
        Check(
            f"from (-6, 1) LS + SAM at the demo radius {default:g} ends at a flatter point than LS "
            f"(sharpness below {FLATTER:g}x LS's)",
            default in flatter,
            f"sharpness LS {ls_sharp:.3f} vs LS + SAM {sharpness(sam[default].trajectory[-1]):.3f}",
        ),
        Check(
            f"from (-6, 1) LS + SAM ends flatter than LS (below {FLATTER:g}x) for some radius in {list(radii)}",
            bool(flatter),
            f"flatter at radii {flatter}" if flatter else "at no radius",
        ),
    ]
    figures = []
    for rho in [default, *[r for r in radii if r != default and r in flatter][:1]]:
        subset = [r for (w, q, _), r in runs.items() if (w == "none" and q == default) or (w == "g_sam" and q == rho)]
        name = f"claim7_toy_rho{rho:g}.png"
        plot_problem(
            problem,
            subset,
            ["mean"],
            ["none", "g_sam"],
            context.figures / name,
            f"LS (none) vs LS + SAM (g_sam), radius {rho:g}, Adam, {scale.toy_steps} steps",
        )
        figures.append(name)
    return ClaimResult(
        number=NUMBER,
        title=TITLE,
        source="SAMO paper, Section 6.1 and Figure 1 (the toy of workers/demo)",
        claim=(
            "From (-6, 1) both LS and LS with SAM (global perturbation) reach the Pareto front, LS in a sharp "
            "region and LS + SAM in a flat one."
        ),
        setup=(
            f"flatmtl demo toy '{PROBLEM}', mean aggregator (LS up to a factor 1/2, the same path under Adam), "
            f"{scale.toy_steps} Adam steps from each of the demo's starts; LS + SAM is the g_sam wrapper at radii "
            f"{list(radii)} (demo default {default:g}). Sharpness: largest |eigenvalue| of the Hessian of f1 + f2."
        ),
        checks=checks,
        tables=[
            table(["Method", "rho", "start", "end point", "distance to Pareto", "sharpness"], body, align="lllrrr")
        ],
        figures=figures,
        numbers={"runs": numbers, "radii": list(radii), "flatter_at": flatter},
    )
