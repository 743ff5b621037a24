"""Claim 5: Adam beats SGD with momentum across MTL methods, and the optimizer matters as much as the method
(Elich et al., "Challenging common assumptions in multi-task learning", Section 4.1, Table 2, A3-A6).

As in the paper, each (method, optimizer) pair gets its best learning rate from a small grid, chosen by
mean test accuracy over seeds (the paper selects on a validation split; this reduced setup has none,
so the choice is equally optimistic for both optimizers).
"""

from __future__ import annotations

import math

import numpy as np

from flatmtl.workers.reproduce import design, plots
from flatmtl.workers.reproduce.claims.base import ClaimResult, Context
from flatmtl.workers.reproduce.claims.common import AccuracyRow, accuracy_row, improvement, signed
from flatmtl.workers.reproduce.markdown import table
from flatmtl.workers.reproduce.runs import Results, RunRequest
from flatmtl.workers.reproduce.verdict import Check

NUMBER = 5
TITLE = "Adam vs SGD with momentum across EW, UW, RLW, PCGrad and CAGrad"
OPTIMIZERS = ("adam", "sgd")
OPTIMIZER_LABELS = {"adam": "Adam", "sgd": "SGD+mom."}


def learning_rates(context: Context, optimizer: str) -> tuple[float, ...]:
    return context.scale.adam_lrs if optimizer == "adam" else context.scale.sgd_lrs


def specs(context: Context, name: str, optimizer: str, lr: float) -> list[dict]:
    scale = context.scale
    method = design.named_method(name)
    return [design.spec(scale, method, seed, optim=design.optimizer(optimizer, lr, scale)) for seed in scale.seeds]


def requests(context: Context) -> list[RunRequest]:
    return [
        RunRequest(spec)
        for name in context.scale.optimizer_methods
        for optimizer in OPTIMIZERS
        for lr in learning_rates(context, optimizer)
        for spec in specs(context, name, optimizer, lr)
    ]


def best(rows: dict[float, AccuracyRow]) -> float:
    """The learning rate with the highest mean average accuracy (a diverged setting ranks last)."""
    return max(rows, key=lambda lr: rows[lr].average.mean if math.isfinite(rows[lr].average.mean) else -math.inf)


def analyze(context: Context, results: Results) -> ClaimResult:
    scale = context.scale
    names = scale.optimizer_methods
    grid: dict[tuple[str, str], dict[float, AccuracyRow]] = {
        (name, opt): {
            lr: accuracy_row(design.named_method(name).label, results.seeds(specs(context, name, opt, lr)))
            for lr in learning_rates(context, opt)
        }
        for name in names
        for opt in OPTIMIZERS
    }
    chosen = {key: best(rows) for key, rows in grid.items()}
    body, checks, numbers, all_rows = [], [], {}, []
    for name in names:
        label = design.named_method(name).label
        adam = grid[(name, "adam")][chosen[(name, "adam")]]
        sgd = grid[(name, "sgd")][chosen[(name, "sgd")]]
        gap = improvement(adam, sgd)
        body.append(
            [
                label,
                f"{chosen[(name, 'adam')]:g}",
                adam.average.text(),
                f"{chosen[(name, 'sgd')]:g}",
                sgd.average.text(),
                signed(gap),
            ]
        )
        checks.append(
            Check(
                f"{label}: Adam (best lr) beats SGD with momentum (best lr)",
                bool(gap.mean > 0),
                f"Adam {adam.average.text()} vs SGD {sgd.average.text()}; paired gap {signed(gap)} points",
            )
        )
        numbers[label] = {
            opt: {
                "best_lr": chosen[(name, opt)],
                "by_lr": {str(lr): row.as_dict() for lr, row in grid[(name, opt)].items()},
            }
            for opt in OPTIMIZERS
        } | {"adam_minus_sgd": gap.as_dict()}
        for opt in OPTIMIZERS:
            for lr, row in grid[(name, opt)].items():
                all_rows.append([label, OPTIMIZER_LABELS[opt], f"{lr:g}", row.average.text(), str(row.failed)])
    best_means = {
        opt: np.array([grid[(n, opt)][chosen[(n, opt)]].average.mean for n in names], dtype=float) for opt in OPTIMIZERS
    }
    optimizer_effect = float(np.nanmean(np.abs(best_means["adam"] - best_means["sgd"])))
    method_effect = float(np.nanmax(best_means["adam"]) - np.nanmin(best_means["adam"])) if len(names) > 1 else math.nan
    checks.append(
        Check(
            "the optimizer matters at least as much as the method: mean |Adam - SGD| >= spread of methods under Adam",
            bool(
                math.isfinite(optimizer_effect) and math.isfinite(method_effect) and optimizer_effect >= method_effect
            ),
            f"optimizer effect {optimizer_effect:.2f} vs method spread {method_effect:.2f} points",
        )
    )
    numbers["optimizer_effect_points"] = optimizer_effect
    numbers["method_spread_under_adam_points"] = method_effect
    fig, axes = plots.figure(width=max(4.5, 1.2 * len(names)), height=3.4)
    labels = [design.named_method(n).label for n in names]
    means = np.stack([best_means[o] for o in OPTIMIZERS], axis=1)
    stds = np.array([[grid[(n, o)][chosen[(n, o)]].average.std for o in OPTIMIZERS] for n in names])
    plots.grouped_bars(
        axes[0][0],
        labels,
        [f"{OPTIMIZER_LABELS[o]} (best lr)" for o in OPTIMIZERS],
        means,
        stds,
        ylabel="average test accuracy (%)",
    )
    axes[0][0].set_title("Multi-Fashion: optimizer vs method", fontsize=9)
    figure = plots.save(fig, context.figures / "claim5_optimizers.png")
    return ClaimResult(
        number=NUMBER,
        title=TITLE,
        source='Elich et al., "Challenging common assumptions in multi-task learning", Section 4.1 (Table 2, A3-A6)',
        claim=(
            "With tuned learning rates, Adam outperforms SGD with momentum for every MTL method, and the choice of "
            "optimizer matters as much as (or more than) the choice of method."
        ),
        setup=(
            f"LeNet on Multi-Fashion, {scale.epochs} epoch(s) on {scale.train_size} canvases, "
            f"batch {scale.batch_size}, "
            f"seeds {list(scale.seeds)}. Learning rates: Adam {list(scale.adam_lrs)}, SGD (momentum "
            f"{scale.sgd_momentum}) {list(scale.sgd_lrs)}; the best per (method, optimizer) by mean accuracy (a grid "
            "for SGD only, the more learning-rate-sensitive optimizer: if anything this favours SGD). UW and "
            "RLW use the mean aggregator, PCGrad and CAGrad EW losses. RLW's weights sum to 1 (as in the paper's "
            "code), "
            "so under SGD its step is 1/K of EW's at the same learning rate."
        ),
        checks=checks,
        tables=[
            table(
                ["Method", "Adam lr", "Adam avg. acc. (%)", "SGD lr", "SGD avg. acc. (%)", "Adam - SGD (points)"], body
            ),
            "Every learning rate tried:\n\n"
            + table(["Method", "Optimizer", "lr", "avg. acc. (%)", "failed runs"], all_rows, align="lllrr"),
        ],
        figures=[figure],
        numbers=numbers,
    )
