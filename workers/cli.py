"""The ``flatmtl`` command line. Subcommands import their heavy dependencies lazily, so the
control-plane commands never load torch or ray."""

from __future__ import annotations

import json

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """FlatMTL: multi-task learning methods, training jobs and sweeps."""


@main.command("methods")
@click.option("--kind", type=click.Choice(["weighting", "aggregator", "wrapper"]), default=None, help="Only this kind.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def methods_command(kind: str | None, as_json: bool) -> None:
    """List every loss weighting, gradient aggregator and wrapper with its hyper-parameters."""
    from workers.mtl import methods

    listed = methods(kind)  # type: ignore[arg-type]
    if as_json:
        click.echo(json.dumps([m.describe() for m in listed], indent=2))
        return
    for method in listed:
        click.echo(f"{method.name:<14} {method.kind:<11} {method.description}")
        click.echo(f"{'':<26} scale: {method.scale}; paper: {method.paper}")
        for hp in method.hparams:
            click.echo(f"{'':<26} {hp.name}={hp.default!r} ({hp.allowed()}): {hp.doc}")
