"""Claim 3: per-step cost of G-SAM, F-MTL and SAMO relative to the plain step, at K = 2 and K = 14.

SAMO paper, Section 5.2 (Table 3) and 6.5 (Figure 4): over the base method G-SAM adds one backward,
F-MTL K backwards, SAMO one backward plus 2K forward-only passes, so SAMO should cost about what G-SAM
does and clearly less than F-MTL. Here the step is the product's ``MTLStep`` on the problems' own
models and a real batch (LeNet on Multi-Fashion, K = 2; MMoE on Yeast, K = 14), timed in interleaved
rounds so that load on a shared machine hits every method alike; the optimizer's update is the same for
all and is left out. Pass counts come from the step's own record. The training runs of claim 2 give a
second, in-situ measurement.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from flatmtl.workers.reproduce import design, plots
from flatmtl.workers.reproduce.claims import flat_methods
from flatmtl.workers.reproduce.claims.base import ClaimResult, Context
from flatmtl.workers.reproduce.markdown import table
from flatmtl.workers.reproduce.runs import Results, RunRequest
from flatmtl.workers.reproduce.verdict import Check

NUMBER = 3
TITLE = "Per-step cost of G-SAM, F-MTL and SAMO vs the base step"
WRAPPERS = ("none", "g_sam", "fmtl", "samo")
LABELS = {"none": "base (EW)", "g_sam": "G-SAM", "fmtl": "F-MTL", "samo": "SAMO"}
WARMUP = 2
ON_PAR = 1.5
"""SAMO counts as "on par with G-SAM" when its step takes at most this many times G-SAM's."""


def expected_passes(wrapper: str, tasks: int) -> tuple[int, int]:
    """(forwards, backwards) of one step, from the paper's accounting on top of the base step's 1 forward and
    K per-task backwards: G-SAM +1 backward at one perturbed point; F-MTL +K backwards, one per task's point;
    SAMO +1 backward (the mean loss) + 2K forward-only SPSA passes, then one forward and backward at each
    task's point in place of the base's K backwards. Every perturbed point needs its own forward."""
    return {
        "none": (1, tasks),
        "g_sam": (2, tasks + 1),
        "fmtl": (1 + tasks, 2 * tasks),
        "samo": (1 + 2 * tasks + tasks, 1 + tasks),
    }[wrapper]


def requests(context: Context) -> list[RunRequest]:
    return []


def measure(problem_name: str, batch_size: int, repeats: int, problem_options: dict) -> dict[str, dict]:
    """Median step seconds and pass counts of every wrapper on one real batch of the problem."""
    from flatmtl.workers import mtl, problems
    from flatmtl.workers.training.data import collate, model_input

    torch.set_num_threads(1)
    torch.manual_seed(0)
    problem = problems.build(problem_name, **problem_options)
    model = problem.model()
    data = problem.dataset("train")
    inputs, targets = collate(data, list(range(min(batch_size, len(data)))))  # type: ignore[arg-type]
    # The papers' base step forms every task's gradient (diagnostics at every step), so it is what their
    # accounting adds to; without diagnostics the averaging base step takes one backward instead of K.
    steps = {w: mtl.MTLStep.from_model(model, wrapper=w, seed=0, diagnostics_every=1) for w in WRAPPERS}
    times: dict[str, list[float]] = {w: [] for w in WRAPPERS}
    passes: dict[str, tuple[int, int]] = {}

    def closure() -> torch.Tensor:
        return problem.losses(model(model_input(inputs)), targets)

    for round_index in range(WARMUP + repeats):
        order = WRAPPERS[round_index % len(WRAPPERS) :] + WRAPPERS[: round_index % len(WRAPPERS)]
        for wrapper in order:
            started = time.perf_counter()
            record = steps[wrapper](closure)
            elapsed = time.perf_counter() - started
            model.zero_grad(set_to_none=True)
            passes[wrapper] = (record.forward_passes, record.backward_passes)
            if round_index >= WARMUP:
                times[wrapper].append(elapsed)
    base = statistics.median(times["none"])
    return {
        w: {
            "median_seconds": statistics.median(times[w]),
            "ratio": statistics.median(times[w]) / base,
            "forwards": passes[w][0],
            "backwards": passes[w][1],
            "tasks": problem.num_tasks,
        }
        for w in WRAPPERS
    }


def in_training(context: Context, results: Results) -> dict[str, dict[str, float]]:
    """Median logged step time of claim 2's F- and SAMO- runs over their base runs' (optimizer included)."""
    ratios: dict[str, dict[str, float]] = {}
    for aggregator in context.scale.aggregators:
        medians = {}
        for variant in design.VARIANTS:
            seconds = [
                s
                for r in results.seeds(flat_methods.specs(context, aggregator, variant))
                for s in r.series("step_seconds")
            ]
            medians[variant] = float(np.nanmedian(seconds)) if seconds else float("nan")
        ratios[design.AGGREGATOR_LABELS[aggregator]] = {v: medians[v] / medians["base"] for v in ("F", "SAMO")}
    return ratios


def analyze(context: Context, results: Results) -> ClaimResult:
    scale = context.scale
    settings = {
        "K=2 (Multi-Fashion, LeNet)": (design.PROBLEM, {"train_size": scale.cost_batch_size, "test_size": 8}),
        "K=14 (Yeast, MMoE)": (design.K14_PROBLEM, {}),
    }
    measured = {}
    for label, (name, options) in settings.items():
        context.echo(f"claim 3: timing {len(WRAPPERS)} step kinds on {label}, {scale.cost_repeats} rounds")
        measured[label] = measure(name, scale.cost_batch_size, scale.cost_repeats, options)
    body, checks = [], []
    for label, rows in measured.items():
        tasks = rows["none"]["tasks"]
        for wrapper in WRAPPERS:
            row = rows[wrapper]
            forwards, backwards = expected_passes(wrapper, tasks)
            body.append(
                [
                    label,
                    LABELS[wrapper],
                    f"{1e3 * row['median_seconds']:.1f}",
                    f"{row['ratio']:.2f}",
                    f"{row['forwards']} ({forwards})",
                    f"{row['backwards']} ({backwards})",
                ]
            )
        mismatched = [
            LABELS[w] for w in WRAPPERS if (rows[w]["forwards"], rows[w]["backwards"]) != expected_passes(w, tasks)
        ]
        checks.append(
            Check(
                f"{label}: forward/backward counts match the paper's cost accounting",
                not mismatched,
                "all match" if not mismatched else f"differ for {', '.join(mismatched)}",
            )
        )
        samo, fmtl, gsam = rows["samo"]["ratio"], rows["fmtl"]["ratio"], rows["g_sam"]["ratio"]
        checks.append(
            Check(
                f"{label}: a SAMO step is cheaper than an F-MTL step",
                samo < fmtl,
                f"SAMO {samo:.2f}x vs F-MTL {fmtl:.2f}x base",
            )
        )
        checks.append(
            Check(
                f"{label}: a SAMO step costs at most {ON_PAR}x a G-SAM step (on par)",
                samo <= ON_PAR * gsam,
                f"SAMO {samo:.2f}x vs G-SAM {gsam:.2f}x base ({samo / gsam:.2f}x G-SAM)",
            )
        )
    training = in_training(context, results)
    training_table = table(
        ["Base method", "F- step / base step", "SAMO- step / base step"],
        [[name, f"{r['F']:.2f}", f"{r['SAMO']:.2f}"] for name, r in training.items()],
    )
    fig, axes = plots.figure(width=5.0, height=3.4)
    labels = list(measured)
    ratios = np.array([[measured[label][w]["ratio"] for w in WRAPPERS[1:]] for label in labels])
    plots.grouped_bars(
        axes[0][0],
        labels,
        [LABELS[w] for w in WRAPPERS[1:]],
        ratios,
        np.full_like(ratios, np.nan),
        ylabel="step time / base step time",
    )
    axes[0][0].set_ylim(0, max(1.0, float(np.nanmax(ratios))) * 1.15)
    axes[0][0].axhline(1.0, color="grey", linewidth=0.8)
    figure = plots.save(fig, context.figures / "claim3_cost.png")
    return ClaimResult(
        number=NUMBER,
        title=TITLE,
        source="SAMO paper, Section 5.2 (Table 3) and Section 6.5 (Figure 4)",
        claim=(
            "Over the base method, G-SAM costs one extra backward, F-MTL K extra backwards, SAMO one extra backward "
            "plus 2K cheap forwards: SAMO is on par with G-SAM and substantially faster than F-MTL."
        ),
        setup=(
            f"One real training batch of {scale.cost_batch_size} (Yeast: {scale.cost_batch_size} rows), EW + mean, "
            f"wrappers at their defaults, one torch thread; median of {scale.cost_repeats} interleaved rounds after "
            f"{WARMUP} warm-up rounds. Counts in brackets are the paper's accounting (see the docstring of "
            "workers/reproduce/claims/cost.py)."
        ),
        checks=checks,
        tables=[
            table(
                ["Setting", "Step", "ms/step", "x base", "forwards (paper)", "backwards (paper)"], body, align="llrrrr"
            ),
            "In the training runs of claim 2 (median logged step time including the optimizer, two runs at a time):\n\n"
            + training_table,
        ],
        figures=[figure],
        numbers={"steps": measured, "in_training": training},
    )
