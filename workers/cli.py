"""The ``flatmtl`` command line. Subcommands import their heavy dependencies lazily, so the
control-plane commands never load torch or ray."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from flatmtl.service.cli import token_option, url_option

if TYPE_CHECKING:
    from flatmtl.workers.mtl.registry import Kind


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="flatmtl", prog_name="flatmtl")
def main() -> None:
    """FlatMTL: multi-task learning methods, training jobs and sweeps."""


@main.command("methods")
@click.option("--kind", type=click.Choice(["weighting", "aggregator", "wrapper"]), default=None, help="Only this kind.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def methods_command(kind: str | None, as_json: bool) -> None:
    """List every loss weighting, gradient aggregator and wrapper with its hyper-parameters."""
    from flatmtl.workers.mtl import methods

    listed = methods(kind)  # type: ignore[arg-type]
    if as_json:
        click.echo(json.dumps([m.describe() for m in listed], indent=2))
        return
    for method in listed:
        click.echo(f"{method.name:<14} {method.kind:<11} {method.description}")
        click.echo(f"{'':<26} scale: {method.scale}; paper: {method.paper}")
        for hp in method.hparams:
            click.echo(f"{'':<26} {hp.name}={hp.default!r} ({hp.allowed()}): {hp.doc}")


@main.command("problems")
@click.option("--remote", is_flag=True, help="What the service's live workers run (asks the API), not this machine.")
@url_option
@token_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def problems_command(remote: bool, url: str, token: str | None, as_json: bool) -> None:
    """List the problems and models that can run, where each comes from (built-in or a plugin's package and
    entry point) and its options; a plugin that cannot load is listed with the reason. Without --remote: this
    installation; with it: every live worker of the service, through the API."""
    if remote:
        from flatmtl.service.cli import call_api, make_client

        with make_client(url, token) as client:
            found = call_api(client, "GET", "/v1/problems")
        entries = [{"kind": kind.rstrip("s"), **entry} for kind in ("problems", "models") for entry in found[kind]]
    else:
        from flatmtl.workers.problems.registry import catalog

        entries = catalog()
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    for entry in entries:
        click.echo(f"{entry['name']:<20} {entry['kind']:<8} {entry['source']}")
        for key in ("error", "options", "models", "workers"):
            value = entry.get(key)
            if value:
                click.echo(f"{'':<30} {key}: {value if isinstance(value, str) else ', '.join(value)}")


@main.group("demo")
def demo_group() -> None:
    """Demos: the MTL core on toy problems, and the whole service end to end."""


@demo_group.command("toy")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs/toy"),
    show_default=True,
    help="Directory for the figures and tables.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every step's random generator.")
@click.option("--steps", type=click.IntRange(min=1), default=100, show_default=True, help="Optimizer steps per run.")
@click.option(
    "--aggregators", default=None, help="Comma-separated aggregator names [default: mean,mgda,pcgrad,cagrad,nash_mtl]."
)
@click.option("--wrappers", default=None, help="Comma-separated wrapper names [default: none,sam,g_sam,fmtl,samo].")
@click.option("--problems", default="samo,cagrad", show_default=True, help="Comma-separated toy problems.")
@click.option(
    "--rho",
    type=click.FloatRange(min=0),
    default=None,
    help="Radius for every wrapper radius (rho, rho_*) [default: per problem].",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=min(4, os.cpu_count() or 1),
    show_default=True,
    help="Processes to spread the runs over.",
)
def demo_toy_command(
    out: Path,
    seed: int,
    steps: int,
    aggregators: str | None,
    wrappers: str | None,
    problems: str,
    rho: float | None,
    workers: int,
) -> None:
    """Optimize the SAMO and CAGrad two-objective toys with each aggregator x wrapper, with and without SAM.

    Writes toy_<problem>.png (trajectories over the loss contours) and results.md/results.json (where
    each run ended, its two objectives and its distance to the Pareto set). Without --aggregators or
    --wrappers, the default methods run.
    """
    from flatmtl.workers.mtl.errors import MethodError
    from flatmtl.workers.toy import demo as toy

    def choose(kind: Kind, option: str, given: str | None, defaults: tuple[str, ...]) -> tuple[str, ...]:
        try:
            return toy.parse_names(kind, given if given is not None else ",".join(defaults))
        except MethodError as error:
            raise click.BadParameter(str(error), param_hint=option) from None

    try:
        chosen_problems = toy.parse_problems(problems)
    except MethodError as error:
        raise click.BadParameter(str(error), param_hint="--problems") from None
    demo = toy.ToyDemo(
        out=out,
        problems=chosen_problems,
        aggregators=choose("aggregator", "--aggregators", aggregators, toy.DEFAULT_AGGREGATORS),
        wrappers=choose("wrapper", "--wrappers", wrappers, toy.DEFAULT_WRAPPERS),
        steps=steps,
        seed=seed,
        rho=rho,
        workers=workers,
    )
    toy.run_demo(demo, echo=click.echo)


def _add_commands() -> None:
    """Subcommands of the other parts of the product; each imports its heavy dependencies lazily."""
    from flatmtl.service.cli import commands as control_plane_commands
    from flatmtl.workers.reproduce.cli import commands as reproduce_commands
    from flatmtl.workers.training.cli import commands as training_commands
    from flatmtl.workers.worker.cli import commands as worker_commands
    from flatmtl.workers.worker.cli import demo_commands

    for command in [*control_plane_commands, *training_commands, *worker_commands, *reproduce_commands]:
        main.add_command(command)
    for command in demo_commands:
        demo_group.add_command(command)


_add_commands()
