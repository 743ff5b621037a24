"""Figure helpers: headless matplotlib, one place for sizes and saving."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

DPI = 100


def figure(columns: int = 1, rows: int = 1, *, width: float = 4.2, height: float = 3.2) -> tuple[Any, Any]:
    """A figure with ``rows x columns`` axes (always a 2-D array of axes)."""
    return plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)


def save(fig: Any, path: Path) -> str:
    """Write the PNG and close the figure; returns the file name (the report links it relative to its folder)."""
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path.name


def grouped_bars(
    ax: Any,
    groups: Sequence[str],
    series: Sequence[str],
    means: np.ndarray,
    stds: np.ndarray,
    *,
    ylabel: str,
) -> None:
    """Bars for ``means[group, series]`` with standard-deviation whiskers (NaN spreads draw none)."""
    width = 0.8 / len(series)
    positions = np.arange(len(groups))
    for index, name in enumerate(series):
        offset = positions + (index - (len(series) - 1) / 2) * width
        errors = np.nan_to_num(stds[:, index], nan=0.0)
        ax.bar(offset, means[:, index], width, yerr=errors, capsize=3, label=name)
    ax.set_xticks(positions, groups)
    ax.set_ylabel(ylabel)
    finite = means[np.isfinite(means)]
    if finite.size:
        spread = max(float(finite.max() - finite.min()), 1.0)
        ax.set_ylim(float(finite.min()) - 1.5 * spread, float(finite.max()) + 0.8 * spread)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
