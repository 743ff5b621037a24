"""PNG figures of a run, drawn from its metric files (so they can be redrawn after a resume or a crash).

Uses matplotlib's object API (``Figure``), never pyplot, so no GUI backend or global state is touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from flatmtl.workers.training.rundir import RunDirectory


def _series(lines: Sequence[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the lines that carry a finite ``key``."""
    pairs = [(line["step"], line[key]) for line in lines if line.get(key) is not None]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*pairs, strict=True)
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def _smooth(values: np.ndarray) -> np.ndarray:
    """Trailing moving average over about 2% of the points: per-step diagnostics are noisy."""
    window = max(1, len(values) // 50)
    if window == 1:
        return values
    cumulative = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    starts = np.arange(1, len(values) + 1) - counts
    return (cumulative[1:] - cumulative[starts]) / counts


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def draw(run: RunDirectory, tasks: Sequence[str]) -> list[Path]:
    """losses.png, conflict.png and magnitude_similarity.png under ``plots/``; returns the files written."""
    steps = run.read_lines(run.step_metrics)
    epochs = run.read_lines(run.epoch_metrics)
    run.plots.mkdir(parents=True, exist_ok=True)

    figure = Figure(figsize=(7, 4))
    axes = figure.add_subplot()
    for task in tasks:
        x, y = _series(steps, f"loss/{task}")
        (line,) = axes.plot(x, y, alpha=0.3, linewidth=0.8)
        ex, ey = _series(epochs, f"train/loss/{task}")
        axes.plot(ex, ey, "o-", color=line.get_color(), label=f"{task} (epoch mean)")
    axes.set(xlabel="step", ylabel="training loss", title="Per-task loss")
    axes.legend(fontsize="small")
    written = [_save(figure, run.plots / "losses.png")]

    figure = Figure(figsize=(7, 4))
    axes = figure.add_subplot()
    x, y = _series(steps, "conflict_ratio")
    axes.plot(x, _smooth(y), label="conflict ratio")
    for key in ("cosine_mean", "cosine_min"):
        x, y = _series(steps, key)
        axes.plot(x, _smooth(y), label=key.replace("_", " "))
    axes.axhline(0.0, color="grey", linewidth=0.5)
    axes.set(xlabel="step", title="Gradient conflict (moving average)", ylim=(-1.05, 1.05))
    axes.legend(fontsize="small")
    written.append(_save(figure, run.plots / "conflict.png"))

    figure = Figure(figsize=(7, 4))
    axes = figure.add_subplot()
    x, y = _series(steps, "magnitude_similarity_mean")
    axes.plot(x, y, alpha=0.3, linewidth=0.8)
    axes.plot(x, _smooth(y), label="mean over task pairs")
    axes.set(xlabel="step", title="Gradient magnitude similarity", ylim=(0.0, 1.05))
    axes.legend(fontsize="small")
    written.append(_save(figure, run.plots / "magnitude_similarity.png"))
    return written
