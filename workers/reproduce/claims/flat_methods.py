"""Claim 2: the F- and SAMO- versions of MGDA, PCGrad, CAGrad, IMTL-G and FairGrad beat the plain ones.

F-MTL paper, Table 2 (Multi-Fashion: F-MGDA 87.73 vs MGDA 86.27, F-PCGrad 87.76 vs 86.57, F-CAGrad 87.82
vs 86.51, and so on); SAMO paper, Tables 4-7 (SAMO improves the methods it wraps). Each comparison is
paired by seed: the same seed gives the same initialization and batch order to base and wrapped runs.
"""

from __future__ import annotations

import numpy as np

from flatmtl.workers.reproduce import design, plots
from flatmtl.workers.reproduce.claims.base import ClaimResult, Context
from flatmtl.workers.reproduce.claims.common import TASK_LABELS, TASKS, AccuracyRow, accuracy_row, improvement, signed
from flatmtl.workers.reproduce.markdown import table
from flatmtl.workers.reproduce.runs import Results, RunRequest
from flatmtl.workers.reproduce.verdict import Check

NUMBER = 2
TITLE = "Base vs F-method vs SAMO-method on Multi-Fashion"


def specs(context: Context, aggregator: str, variant: str) -> list[dict]:
    method = design.aggregator_method(aggregator, variant)
    return [design.spec(context.scale, method, seed) for seed in context.scale.seeds]


def requests(context: Context) -> list[RunRequest]:
    return [
        RunRequest(spec)
        for aggregator in context.scale.aggregators
        for variant in design.VARIANTS
        for spec in specs(context, aggregator, variant)
    ]


def rows(context: Context, results: Results) -> dict[tuple[str, str], AccuracyRow]:
    return {
        (aggregator, variant): accuracy_row(
            design.aggregator_method(aggregator, variant).label, results.seeds(specs(context, aggregator, variant))
        )
        for aggregator in context.scale.aggregators
        for variant in design.VARIANTS
    }


def analyze(context: Context, results: Results) -> ClaimResult:
    scale = context.scale
    found = rows(context, results)
    body, checks, numbers = [], [], {}
    for aggregator in scale.aggregators:
        base = found[(aggregator, "base")]
        for variant in design.VARIANTS:
            row = found[(aggregator, variant)]
            gain = improvement(row, base) if variant != "base" else None
            body.append([*row.cells(), "" if gain is None else signed(gain)])
            numbers[row.label] = {**row.as_dict(), "gain_over_base": None if gain is None else gain.as_dict()}
            if gain is not None:
                checks.append(
                    Check(
                        f"{row.label} has a higher average accuracy than {base.label}",
                        bool(gain.mean > 0),
                        f"{row.average.text()} vs {base.average.text()}; paired gain {signed(gain)} points",
                    )
                )
    header = ["Method", *(f"{TASK_LABELS[t]} acc. (%)" for t in TASKS), "average (%)", "gain vs base (points)"]
    fig, axes = plots.figure(width=max(4.2, 1.4 * len(scale.aggregators)), height=3.4)
    means = np.array([[found[(a, v)].average.mean for v in design.VARIANTS] for a in scale.aggregators])
    stds = np.array([[found[(a, v)].average.std for v in design.VARIANTS] for a in scale.aggregators])
    labels = [design.AGGREGATOR_LABELS[a] for a in scale.aggregators]
    plots.grouped_bars(axes[0][0], labels, ["base", "F-", "SAMO-"], means, stds, ylabel="average test accuracy (%)")
    axes[0][0].set_title(f"Multi-Fashion, mean ± std over {len(scale.seeds)} seed(s)", fontsize=9)
    figure = plots.save(fig, context.figures / "claim2_flat_methods.png")
    return ClaimResult(
        number=NUMBER,
        title=TITLE,
        source="F-MTL paper, Table 2 (Multi-MNIST family); SAMO paper, Tables 4-7",
        claim=(
            "Wrapping a gradient-manipulation method in F-MTL (and, in the SAMO paper, in SAMO) raises its accuracy: "
            "on Multi-Fashion the F-MTL paper reports +1.2 to +1.5 points of average accuracy for MGDA, PCGrad "
            "and CAGrad."
        ),
        setup=(
            f"LeNet on Multi-Fashion, Adam lr {scale.lr}, batch {scale.batch_size}, {scale.epochs} epoch(s) on "
            f"{scale.train_size} training canvases, tested on {scale.test_size}; seeds {list(scale.seeds)}. "
            "Wrappers at their defaults: F-MTL plain SAM with rho_shared = rho_task = 0.05, SAMO rho = 1e-3, "
            "alpha = 0.5, mu = 0.01 (the SAMO authors' values). Gains are paired per seed."
        ),
        checks=checks,
        tables=[table(header, body)],
        figures=[figure],
        numbers=numbers,
    )
