"""Claim 1: under ERM the share of steps whose task gradients conflict rises above 50%; under F-MTL it falls
toward 0% (F-MTL paper, Figure 3 and Appendix D.4, Figure 11).

A step's two loss gradients at the current parameters conflict when ``g1 . g2 < 0`` (the paper's
definition, ``g_{1,loss} . g_{2,loss} < 0``); the training loop logs it from the step's Gram matrix, and
F-MTL's Gram is that of its loss parts at the unperturbed point, so both curves measure the same thing.
The share is the fraction of conflicting steps in each of ``WINDOWS`` equal stretches of training.
Claim 8 (calibration, r-ball) reuses these runs.
"""

from __future__ import annotations

import numpy as np

from flatmtl.workers.reproduce import design, plots
from flatmtl.workers.reproduce.claims.base import ClaimResult, Context
from flatmtl.workers.reproduce.markdown import table
from flatmtl.workers.reproduce.runs import Results, RunRecord, RunRequest
from flatmtl.workers.reproduce.stats import summarize
from flatmtl.workers.reproduce.verdict import at_most, greater

NUMBER = 1
TITLE = "Gradient conflict over training, ERM vs F-MTL"
WINDOWS = 10
ERM_FLOOR = 0.5
FMTL_CEILING = 0.05
METHODS = {"ERM": design.Method("ERM"), "F-MTL": design.Method("F-MTL", wrapper="fmtl")}


def problem(context: Context) -> tuple[str, dict]:
    return design.conflict_problem(context.mnist_dir)


def specs(context: Context, label: str) -> list[dict]:
    name, options = problem(context)
    scale = context.scale
    return [
        design.spec(scale, METHODS[label], seed, problem=name, problem_options=options, epochs=scale.conflict_epochs)
        for seed in scale.seeds
    ]


def requests(context: Context) -> list[RunRequest]:
    return [RunRequest(spec) for label in METHODS for spec in specs(context, label)]


def windowed_share(record: RunRecord, windows: int) -> np.ndarray:
    """Mean conflict indicator over ``windows`` equal stretches of the run's steps (fewer if it has fewer steps)."""
    series = np.asarray(record.series("conflict_ratio"), dtype=float)
    if series.size == 0:
        return np.full(1, np.nan)
    return np.array([chunk.mean() for chunk in np.array_split(series, min(windows, series.size))])


def analyze(context: Context, results: Results) -> ClaimResult:
    scale = context.scale
    name, _ = problem(context)
    curves = {
        label: np.stack([windowed_share(r, WINDOWS) for r in results.seeds(specs(context, label))]) for label in METHODS
    }
    first = {label: summarize(curves[label][:, 0]) for label in METHODS}
    last = {label: summarize(curves[label][:, -1]) for label in METHODS}
    overall = {label: summarize(curves[label].mean(axis=1)) for label in METHODS}
    checks = [
        greater(
            f"ERM's conflict share at the end of training exceeds {ERM_FLOOR:.0%}",
            last["ERM"].mean,
            ERM_FLOOR,
            names=("ERM last window", "threshold"),
        ),
        at_most(
            f"F-MTL's conflict share at the end of training is at most {FMTL_CEILING:.0%} (paper: below 5%)",
            last["F-MTL"].mean,
            FMTL_CEILING,
            name="F-MTL last window",
        ),
        greater(
            "ERM's conflict share rises over training",
            last["ERM"].mean,
            first["ERM"].mean,
            names=("last window", "first window"),
        ),
        greater(
            "F-MTL's conflict share falls over training",
            first["F-MTL"].mean,
            last["F-MTL"].mean,
            names=("first window", "last window"),
        ),
        greater(
            "F-MTL ends with less conflict than ERM",
            last["ERM"].mean,
            last["F-MTL"].mean,
            names=("ERM", "F-MTL"),
        ),
    ]
    steps = curves["ERM"].shape[1]
    fig, axes = plots.figure(width=5.0, height=3.4)
    ax = axes[0][0]
    epochs = scale.conflict_epochs
    positions = (np.arange(steps) + 0.5) * epochs / steps
    for label, color in (("ERM", "tab:orange"), ("F-MTL", "tab:blue")):
        mean = curves[label].mean(axis=0)
        spread = curves[label].std(axis=0)
        ax.plot(positions, 100 * mean, marker="o", color=color, label=label)
        ax.fill_between(positions, 100 * (mean - spread), 100 * (mean + spread), color=color, alpha=0.2)
    ax.axhline(100 * ERM_FLOOR, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("steps with g1 . g2 < 0 (%)")
    ax.set_ylim(-5, 105)
    ax.set_title(f"{name}: gradient conflict (mean ± std, {len(scale.seeds)} seed(s))", fontsize=9)
    ax.legend()
    figure = plots.save(fig, context.figures / "claim1_conflict.png")
    body = [
        [label, first[label].text(2, 100), last[label].text(2, 100), overall[label].text(2, 100)] for label in METHODS
    ]
    header = ["Method", "first window (%)", "last window (%)", "whole run (%)"]
    return ClaimResult(
        number=NUMBER,
        title=TITLE,
        source="F-MTL paper, Section 5.3 (Figure 3) and Appendix D.4 (Figure 11)",
        claim=(
            "Under ERM the share of mini-batches whose two task gradients conflict (g1,loss . g2,loss < 0) rises "
            "above 50%; under F-MTL it falls toward 0% (below 5%)."
        ),
        setup=(
            f"{name} (LeNet), EW + mean; F-MTL at its defaults (rho_shared = rho_task = 0.05). Adam lr {scale.lr}, "
            f"batch {scale.batch_size}, {scale.conflict_epochs} epoch(s) on {scale.train_size} canvases "
            f"({scale.steps_per_epoch * scale.conflict_epochs} steps), seeds {list(scale.seeds)}. Every step's "
            f"conflict is logged; the share is taken over {min(WINDOWS, steps)} equal windows of training."
        ),
        checks=checks,
        tables=[table(header, body)],
        figures=[figure],
        numbers={
            "problem": name,
            "curves_percent": {label: (100 * curves[label]).tolist() for label in METHODS},
            "first_window": {label: first[label].as_dict() for label in METHODS},
            "last_window": {label: last[label].as_dict() for label in METHODS},
            "whole_run": {label: overall[label].as_dict() for label in METHODS},
        },
    )
