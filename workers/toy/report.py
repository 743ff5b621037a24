"""What the toy demo writes: one trajectory figure per problem and a table of where every run ended."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch

from flatmtl.workers.toy.problems import ToyProblem
from flatmtl.workers.toy.trajectory import RunResult

START_COLORS = ("tab:red", "tab:orange", "tab:purple", "tab:brown", "tab:pink")
GRID_POINTS = 160
PANEL_INCHES = 3.0
TITLE_INCHES = 0.3
TOP_INCHES = 0.75
BOTTOM_INCHES = 0.7
CONTOUR_LEVELS = 24
PARETO_COLOR = "tab:green"


def plot_problem(
    problem: ToyProblem,
    results: Sequence[RunResult],
    aggregators: Sequence[str],
    wrappers: Sequence[str],
    path: Path,
    subtitle: str,
) -> None:
    """A grid of panels, aggregators down and wrappers across, each showing the mean objective's
    contours, the Pareto set and the trajectories from every starting point."""
    (x_low, x_high), (y_low, y_high) = problem.view
    xs = torch.linspace(x_low, x_high, GRID_POINTS, dtype=torch.float64)
    ys = torch.linspace(y_low, y_high, GRID_POINTS, dtype=torch.float64)
    grid_x, grid_y = torch.meshgrid(xs, ys, indexing="xy")
    mean = problem.objectives(torch.stack([grid_x, grid_y], dim=-1)).mean(dim=-1)
    pareto = problem.pareto_set()

    panel_width = PANEL_INCHES
    panel_height = PANEL_INCHES * (y_high - y_low) / (x_high - x_low)
    rows, cols = len(aggregators), len(wrappers)
    figure, axes = plt.subplots(
        rows,
        cols,
        figsize=(panel_width * cols + 0.6, (panel_height + TITLE_INCHES) * rows + TOP_INCHES + BOTTOM_INCHES),
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    by_method = {(r.spec.aggregator, r.spec.wrapper, r.spec.start): r for r in results}
    for row, aggregator in enumerate(aggregators):
        for col, wrapper in enumerate(wrappers):
            ax = axes[row][col]
            ax.contourf(grid_x, grid_y, mean, levels=CONTOUR_LEVELS, cmap="Greys_r", alpha=0.25)
            ax.contour(grid_x, grid_y, mean, levels=CONTOUR_LEVELS, cmap="viridis", linewidths=0.7)
            ax.plot(pareto[:, 0], pareto[:, 1], color=PARETO_COLOR, linewidth=5, alpha=0.7, solid_capstyle="round")
            for start in range(len(problem.starts)):
                result = by_method.get((aggregator, wrapper, start))
                if result is None:
                    continue
                path_xy = result.trajectory
                color = START_COLORS[start % len(START_COLORS)]
                ax.plot(path_xy[:, 0], path_xy[:, 1], color=color, linewidth=1.4)
                ax.plot(path_xy[0, 0], path_xy[0, 1], "o", color="black", markersize=4)
                ax.plot(path_xy[-1, 0], path_xy[-1, 1], "*", color=color, markersize=10, markeredgecolor="black")
            ax.set_xlim(x_low, x_high)
            ax.set_ylim(y_low, y_high)
            ax.set_aspect("equal")
            ax.set_title(f"{aggregator} + {wrapper}", fontsize=10)
            ax.tick_params(labelsize=7)
            ax.locator_params(nbins=5)
            ax.label_outer()
    handles = [plt.Line2D([], [], color=PARETO_COLOR, linewidth=5, alpha=0.7, label="Pareto set")]
    handles += [
        plt.Line2D([], [], color=START_COLORS[i % len(START_COLORS)], marker="*", label=f"from {start}")
        for i, start in enumerate(problem.starts)
    ]
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    height = figure.get_figheight()
    figure.suptitle(f"{problem.title}\n{subtitle}", fontsize=11, y=1 - 0.08 / height, va="top")
    figure.subplots_adjust(
        left=0.45 / figure.get_figwidth(),
        right=0.98,
        bottom=BOTTOM_INCHES / height,
        top=1 - TOP_INCHES / height,
        wspace=0.08,
        hspace=TITLE_INCHES / panel_height,
    )
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _format(value: float) -> str:
    return f"{value:.4g}"


def markdown_table(problem: ToyProblem, rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        f"## {problem.title}",
        "",
        f"Source: {problem.source}. Distance is to the nearest point of the Pareto set; cos is the cosine",
        "between the two task gradients at the last step (-1 on the Pareto set's interior).",
        "",
        "| aggregator | wrapper | start | final (x1, x2) | f1 | f2 | distance to Pareto | cos |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        start = ", ".join(_format(v) for v in row["start"])
        final = ", ".join(_format(v) for v in row["final"])
        lines.append(
            f"| {row['aggregator']} | {row['wrapper']} | ({start}) | ({final}) | {_format(row['f1'])} | "
            f"{_format(row['f2'])} | {_format(row['distance_to_pareto'])} | {_format(row['final_cosine'])} |"
        )
    return "\n".join(lines) + "\n"


def write_tables(
    out: Path, problems: Sequence[ToyProblem], results: Sequence[RunResult], settings: dict[str, Any]
) -> tuple[Path, Path]:
    """``results.json`` (every number, for tools and tests) and ``results.md`` (the same, for people)."""
    document: dict[str, Any] = {"settings": settings, "problems": {}}
    sections = ["# Toy problems: where each method ends", ""]
    sections.append(", ".join(f"{key}={value}" for key, value in settings.items()) + "\n")
    for problem in problems:
        rows = [r.row() for r in results if r.spec.problem == problem.name]
        document["problems"][problem.name] = {
            "title": problem.title,
            "source": problem.source,
            "rho": next((r.spec.rho for r in results if r.spec.problem == problem.name), problem.rho),
            "runs": rows,
        }
        sections.append(markdown_table(problem, rows))
    json_path, markdown_path = out / "results.json", out / "results.md"
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    markdown_path.write_text("\n".join(sections))
    return json_path, markdown_path
