"""Claim 4: random loss weighting is as good as equal weighting, whatever the sampling distribution
(Lin et al., "Reasonable Effectiveness of Random Weighting", Sections 5.1 and 5.4, Figure 2).

Weights and scale follow the paper: lambda on the simplex each step (normal and uniform through a
softmax, Dirichlet(1) as is, Bernoulli(1/2) and constrained Bernoulli normalized to sum 1), E[lambda] =
1/K, with the same mean aggregator as EW. The paper's Figure 2 is on NYUv2 (8 repeats); the checks here
ask the same questions of Multi-Fashion with the report's seeds.
"""

from __future__ import annotations

import numpy as np

from flatmtl.workers.reproduce import design, plots
from flatmtl.workers.reproduce.claims.base import ClaimResult, Context
from flatmtl.workers.reproduce.claims.common import TASK_LABELS, TASKS, AccuracyRow, accuracy_row, improvement, signed
from flatmtl.workers.reproduce.markdown import table
from flatmtl.workers.reproduce.runs import Results, RunRequest
from flatmtl.workers.reproduce.verdict import Check

NUMBER = 4
TITLE = "Random loss weighting vs equal weighting, five sampling distributions"
EW = design.Method("EW")


def specs(context: Context, method: design.Method) -> list[dict]:
    return [design.spec(context.scale, method, seed) for seed in context.scale.seeds]


def methods(context: Context) -> list[design.Method]:
    return [EW, *(design.rlw(d) for d in context.scale.distributions)]


def requests(context: Context) -> list[RunRequest]:
    return [RunRequest(spec) for method in methods(context) for spec in specs(context, method)]


def analyze(context: Context, results: Results) -> ClaimResult:
    scale = context.scale
    found: dict[str, AccuracyRow] = {
        m.label: accuracy_row(m.label, results.seeds(specs(context, m))) for m in methods(context)
    }
    base = found[EW.label]
    body, checks, numbers = [], [], {}
    for label, row in found.items():
        gain = None if label == EW.label else improvement(row, base)
        body.append([*row.cells(), "" if gain is None else signed(gain)])
        numbers[label] = {**row.as_dict(), "gain_over_ew": None if gain is None else gain.as_dict()}
        if gain is not None:
            checks.append(
                Check(
                    f"{label} reaches at least EW's average accuracy",
                    bool(gain.mean >= 0),
                    f"{row.average.text()} vs EW {base.average.text()}; paired difference {signed(gain)} points",
                )
            )
    rlw_rows = {label: row for label, row in found.items() if label != EW.label}
    normal = design.rlw("normal").label
    if normal in rlw_rows and len(rlw_rows) > 1 and len(scale.seeds) > 1:
        steadiest = min(rlw_rows, key=lambda label: rlw_rows[label].average.std)
        checks.append(
            Check(
                "RLW with the normal distribution is the most stable across seeds (smallest spread)",
                steadiest == normal,
                ", ".join(f"{label} std {row.average.std:.2f}" for label, row in rlw_rows.items()),
            )
        )
    fig, axes = plots.figure(width=max(4.5, 1.1 * len(found)), height=3.4)
    ax = axes[0][0]
    for position, row in enumerate(found.values()):
        ax.scatter(np.full(len(row.per_seed), position), row.per_seed, color="tab:blue" if position else "tab:orange")
        ax.errorbar(position, row.average.mean, yerr=np.nan_to_num(row.average.std), fmt="_", color="black", capsize=6)
    ax.set_xticks(range(len(found)), [label.replace("RLW ", "RLW\n") for label in found], fontsize=8)
    ax.set_ylabel("average test accuracy (%)")
    ax.set_title("Multi-Fashion: EW vs RLW, one dot per seed", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    figure = plots.save(fig, context.figures / "claim4_random_weighting.png")
    header = ["Method", *(f"{TASK_LABELS[t]} acc. (%)" for t in TASKS), "average (%)", "vs EW (points)"]
    return ClaimResult(
        number=NUMBER,
        title=TITLE,
        source="Lin et al., Reasonable Effectiveness of Random Weighting (TMLR 2022), Sections 5.1 and 5.4",
        claim=(
            "RLW performs comparably to (or better than) EW; with each of five sampling distributions it outperforms "
            "EW, and the standard normal distribution is the most stable."
        ),
        setup=(
            f"LeNet on Multi-Fashion, EW + mean vs RLW + mean, Adam lr {scale.lr}, batch {scale.batch_size}, "
            f"{scale.epochs} epoch(s) on {scale.train_size} canvases, seeds {list(scale.seeds)}; distributions "
            f"{', '.join(scale.distributions)}. Differences are paired per seed."
        ),
        checks=checks,
        tables=[table(header, body)],
        figures=[figure],
        numbers=numbers,
    )
