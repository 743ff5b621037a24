"""Claim 6: gradient conflict between tasks (MTL) vs between samples of one task (STL), over training
(Elich et al., "Challenging common assumptions in multi-task learning", Section 4.2, Figure 3).

At the end of every epoch of the EW + Adam runs (their epoch checkpoints) a few batches of training
samples are drawn and every sample's gradient of every task loss w.r.t. the shared parameters taken.
MTL pairs: two tasks of one sample, ``grad L_a(x_i)`` vs ``grad L_b(x_i)``. STL pairs: one task, two
samples of the batch, ``grad L_t(x_i)`` vs ``grad L_t(x_j)``. For every pair: cosine similarity,
magnitude similarity ``2|g||g'| / (|g|^2 + |g'|^2)`` and the share of parameters whose two gradient
components have opposite signs (all from ``flatmtl.workers.mtl.diagnostics``). The paper summarizes each epoch
by mean, standard deviation and the 2.5/97.5 percentiles, as the plot does.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from flatmtl.workers.reproduce import plots
from flatmtl.workers.reproduce.claims import random_weighting
from flatmtl.workers.reproduce.claims.base import ClaimResult, Context
from flatmtl.workers.reproduce.markdown import table
from flatmtl.workers.reproduce.runs import Results, RunRecord, RunRequest
from flatmtl.workers.reproduce.stats import percentile_band
from flatmtl.workers.reproduce.verdict import Check

NUMBER = 6
TITLE = "Gradient conflict between tasks (MTL) vs between samples (STL)"
MEASURES = ("cosine", "magnitude", "conflicting_share")
MEASURE_LABELS = {
    "cosine": "cosine similarity",
    "magnitude": "magnitude similarity",
    "conflicting_share": "share of conflicting parameters",
}
SHARE_TOLERANCE = 0.05
SETTINGS = ("STL", "MTL")


def specs(context: Context) -> list[dict]:
    return random_weighting.specs(context, random_weighting.EW)


def requests(context: Context) -> list[RunRequest]:
    return [RunRequest(spec, keep_epoch_checkpoints=True) for spec in specs(context)]


def pair_measures(grads: torch.Tensor, pairs: list[tuple[int, int]]) -> dict[str, list[float]]:
    """Cosine, magnitude similarity and opposite-sign share for the given row pairs of a [N, P] matrix."""
    from flatmtl.workers.mtl import diagnostics

    gram = grads.double() @ grads.double().T
    cosine = diagnostics.cosine_matrix(gram)
    magnitude = diagnostics.magnitude_similarity_matrix(gram)
    share = diagnostics.parameter_conflicts(grads).pairwise_share()
    return {
        "cosine": [float(cosine[i, j]) for i, j in pairs],
        "magnitude": [float(magnitude[i, j]) for i, j in pairs],
        "conflicting_share": [float(share[i, j]) for i, j in pairs],
    }


def pairs(samples: int, tasks: int) -> dict[str, list[tuple[int, int]]]:
    """Row pairs of a gradient matrix whose row ``i * tasks + t`` is sample i's gradient of task t."""
    mtl_pairs = [
        (i * tasks + a, i * tasks + b) for i in range(samples) for a, b in itertools.combinations(range(tasks), 2)
    ]
    stl_pairs = [
        (i * tasks + t, j * tasks + t) for t in range(tasks) for i, j in itertools.combinations(range(samples), 2)
    ]
    return {"MTL": mtl_pairs, "STL": stl_pairs}


def measure_run(record: RunRecord, samples: int, batches: int) -> dict[int, dict[str, dict[str, list[float]]]]:
    """Per epoch: per setting (STL/MTL): per measure: the values of every pair of every batch."""
    from flatmtl.service.specs.train import TrainSpec
    from flatmtl.workers import problems
    from flatmtl.workers.training import checkpoint
    from flatmtl.workers.training.config import model_name, split_references
    from flatmtl.workers.training.data import collate, model_input

    spec = TrainSpec.model_validate(record.spec)
    options, _ = split_references(spec)
    problem = problems.build(spec.problem, **options)
    model = problem.model(model_name(spec), **spec.model_options)
    model.eval()
    data = problem.dataset("train")
    shared = list(model.shared_parameters())
    tasks = problem.num_tasks
    index_pairs = pairs(samples, tasks)
    out: dict[int, dict[str, dict[str, list[float]]]] = {}
    for epoch in range(1, len(record.epochs) + 1):
        model.load_state_dict(checkpoint.load(record.directory / "checkpoints" / f"epoch_{epoch:04d}.pt")["model"])
        rng = np.random.default_rng([spec.seed, epoch])
        found = {s: {m: [] for m in MEASURES} for s in SETTINGS}
        for _ in range(batches):
            indices = rng.choice(len(data), size=samples, replace=False)  # type: ignore[arg-type]
            inputs, targets = collate(data, indices)
            rows = []
            for i in range(samples):
                losses = problem.losses(model(model_input(inputs[i : i + 1])), [t[i : i + 1] for t in targets])
                for task in range(tasks):
                    grads = torch.autograd.grad(losses[task], shared, retain_graph=task < tasks - 1, allow_unused=True)
                    rows.append(
                        torch.cat(
                            [
                                (torch.zeros_like(p) if g is None else g).reshape(-1)
                                for g, p in zip(grads, shared, strict=True)
                            ]
                        )
                    )
            matrix = torch.stack(rows)
            for setting in SETTINGS:
                for name, values in pair_measures(matrix, index_pairs[setting]).items():
                    found[setting][name].extend(values)
        out[epoch] = found
    return out


def analyze(context: Context, results: Results) -> ClaimResult:
    scale = context.scale
    records = [r for r in results.seeds(specs(context)) if r.succeeded]
    context.echo(f"claim 6: per-sample gradients at every epoch of {len(records)} run(s)")
    measured = [measure_run(r, scale.gradient_samples, scale.gradient_batches) for r in records]
    epochs = sorted(set.intersection(*(set(m) for m in measured))) if measured else []
    bands: dict[str, dict[str, list[tuple[float, float, float, float]]]] = {
        s: {m: [percentile_band([v for run in measured for v in run[e][s][m]]) for e in epochs] for m in MEASURES}
        for s in SETTINGS
    }
    means = {s: {m: np.array([b[0] for b in bands[s][m]]) for m in MEASURES} for s in SETTINGS}
    stl_low = np.array([b[2] for b in bands["STL"]["cosine"]])
    stl_high = np.array([b[3] for b in bands["STL"]["cosine"]])
    inside = bool(epochs) and bool(np.all((means["MTL"]["cosine"] >= stl_low) & (means["MTL"]["cosine"] <= stl_high)))
    lower = bool(epochs) and bool(np.all(means["MTL"]["magnitude"] < means["STL"]["magnitude"]))
    share_gap = (
        float(np.max(np.abs(means["MTL"]["conflicting_share"] - means["STL"]["conflicting_share"])))
        if epochs
        else float("nan")
    )
    checks = [
        Check(
            "angular conflict is not specific to MTL: at every epoch the mean MTL cosine lies inside the STL "
            "2.5-97.5% band",
            inside,
            "; ".join(
                f"epoch {e}: MTL {m:.3f} in [{lo:.3f}, {hi:.3f}]"
                for e, m, lo, hi in zip(epochs, means["MTL"]["cosine"], stl_low, stl_high, strict=True)
            ),
        ),
        Check(
            "gradient magnitudes differ more between tasks: mean MTL magnitude similarity below STL's at every epoch",
            lower,
            "; ".join(
                f"epoch {e}: MTL {a:.3f} vs STL {b:.3f}"
                for e, a, b in zip(epochs, means["MTL"]["magnitude"], means["STL"]["magnitude"], strict=True)
            ),
        ),
        Check(
            f"a similar share of conflicting parameters in STL and MTL (within {SHARE_TOLERANCE:.0%} at every epoch)",
            bool(np.isfinite(share_gap) and share_gap <= SHARE_TOLERANCE),
            f"largest gap {share_gap:.3f}",
        ),
    ]
    fig, axes = plots.figure(columns=3, width=3.6, height=3.0)
    for ax, measure in zip(axes[0], MEASURES, strict=True):
        for setting, color in (("STL", "tab:red"), ("MTL", "tab:blue")):
            band = np.array(bands[setting][measure]).reshape(-1, 4)
            ax.plot(epochs, band[:, 0], color=color, marker="o", label=setting)
            ax.fill_between(epochs, band[:, 0] - band[:, 1], band[:, 0] + band[:, 1], color=color, alpha=0.2)
            ax.plot(epochs, band[:, 2], color=color, linestyle=":", linewidth=0.8)
            ax.plot(epochs, band[:, 3], color=color, linestyle=":", linewidth=0.8)
        ax.set_xlabel("epoch")
        ax.set_title(MEASURE_LABELS[measure], fontsize=9)
    axes[0][0].legend(fontsize=8)
    figure = plots.save(fig, context.figures / "claim6_stl_vs_mtl.png")
    body = [[f"{e}", *(f"{means[s][m][k]:.3f}" for m in MEASURES for s in SETTINGS)] for k, e in enumerate(epochs)]
    header = ["epoch", *(f"{MEASURE_LABELS[m]} {s}" for m in MEASURES for s in SETTINGS)]
    return ClaimResult(
        number=NUMBER,
        title=TITLE,
        source='Elich et al., "Challenging common assumptions in multi-task learning", Section 4.2 (Figure 3)',
        claim=(
            "Angular gradient conflict is no more a problem of MTL than of STL (the task-pair cosine stays within "
            "the sample-pair spread; a similar share of parameters conflicts), while gradient magnitudes differ "
            "more between tasks than between samples."
        ),
        setup=(
            f"The EW + Adam runs of claim 4 (seeds {list(scale.seeds)}), at the end of each of their {scale.epochs} "
            f"epoch(s): {scale.gradient_batches} batch(es) of {scale.gradient_samples} training samples per epoch and "
            "seed, per-sample gradients of each task w.r.t. the shared LeNet parameters. The paper samples every "
            "fifth step of training, 8 samples per batch."
        ),
        checks=checks,
        tables=[table(header, body)],
        figures=[figure],
        numbers={"epochs": epochs, "bands": {s: {m: bands[s][m] for m in MEASURES} for s in SETTINGS}},
    )
