"""``flatmtl reproduce [--quick]``; ``commands`` is what the ``flatmtl`` group adds."""

from __future__ import annotations

import os
from pathlib import Path

import click

SCALE_NAMES = ("quick", "reduced", "full")


def _default_mnist_dir() -> Path | None:
    from flatmtl.workers.reproduce.design import DEFAULT_MNIST_DIR

    return DEFAULT_MNIST_DIR if DEFAULT_MNIST_DIR.is_dir() else None


@click.command("reproduce")
@click.option("--quick", is_flag=True, help="Tiny sizes (1 seed, a few hundred samples, 1 epoch): the CI check.")
@click.option(
    "--scale",
    "scale_name",
    type=click.Choice(SCALE_NAMES),
    default=None,
    help="quick, reduced (fewer samples and epochs) or full [default: full, or quick with --quick].",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("docs"),
    show_default=True,
    help="Where results.md and results/ (figures, configs, numbers) go.",
)
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Training run directories, reused when the report is run again [default: runs/reproduce-<scale>].",
)
@click.option(
    "--mnist-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="MNIST IDX files for Multi-(Fashion+MNIST) in claim 1 [default: ../shared/data/mnist if present, "
    "else claim 1 falls back to Multi-Fashion].",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=min(2, os.cpu_count() or 1),
    show_default=True,
    help="Training runs at a time (each on one torch thread).",
)
def reproduce_command(
    quick: bool, scale_name: str | None, out: Path, runs_dir: Path | None, mnist_dir: Path | None, workers: int
) -> None:
    """Measure the papers' claims and write docs/results.md with tables, figures, configs and verdicts."""
    from flatmtl.workers.reproduce.pipeline import reproduce
    from flatmtl.workers.reproduce.scale import SCALES

    if quick and scale_name not in (None, "quick"):
        raise click.BadParameter(f"--quick runs the quick scale, not {scale_name!r}", param_hint="--scale")
    name = "quick" if quick else (scale_name or "full")
    if mnist_dir is not None and not mnist_dir.is_dir():
        raise click.BadParameter(f"{mnist_dir} is not a directory", param_hint="--mnist-dir")
    scale = SCALES[name].with_workers(workers)
    report = reproduce(
        scale,
        out,
        runs_dir or Path("runs") / f"reproduce-{name}",
        mnist_dir=mnist_dir or _default_mnist_dir(),
        echo=click.echo,
    )
    for claim in report.claims:
        click.echo(f"claim {claim.number}: {claim.verdict}")
    click.echo(f"wall time {report.wall_seconds / 60:.1f} min")


commands = [reproduce_command]
