"""``flatmtl worker`` and ``flatmtl demo service``.

``commands`` go on the ``flatmtl`` group and ``demo_commands`` on its ``demo`` group (``workers/cli.py``).
Ray, torch and the training code load only when a command runs.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click


@click.command("worker")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--owner", default=None, help="Name on the leases it takes [default: host:pid].")
@click.option("--poll", type=click.FloatRange(min=0.05), default=1.0, show_default=True, help="Seconds between claims.")
@click.option("--max-jobs", type=click.IntRange(min=1), default=None, help="Exit after running this many jobs.")
@click.option("--exit-when-idle", is_flag=True, help="Exit when no job is queued.")
@click.option("--ray-address", default=None, help="Ray cluster address [default: the ray_address setting].")
@click.option(
    "--num-cpus", type=click.IntRange(min=1), default=None, help="CPUs of a local Ray [default: max(cores, 4)]."
)
@click.option("--object-store-mb", type=click.IntRange(min=64), default=256, show_default=True, help="Local Ray only.")
@click.option(
    "--start-timeout",
    type=click.FloatRange(min=1),
    default=120.0,
    show_default=True,
    help="Seconds for a worker group.",
)
@click.option(
    "--collective-timeout",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="Seconds per collective.",
)
@click.option(
    "--job-timeout", type=click.FloatRange(min=1), default=None, help="Seconds a job may run [default: none]."
)
def worker_command(
    config: Path | None,
    owner: str | None,
    poll: float,
    max_jobs: int | None,
    exit_when_idle: bool,
    ray_address: str | None,
    num_cpus: int | None,
    object_store_mb: int,
    start_timeout: float,
    collective_timeout: float,
    job_timeout: float | None,
) -> None:
    """Claim queued jobs and run them on Ray (training jobs as Ray Train runs, sweeps as Ray Tune sweeps).

    SIGTERM or SIGINT: stop claiming, let the current job run for the shutdown_grace_s setting, then stop it at
    its last checkpoint and release it to the queue; exit 0. A second signal stops the job at once (exit 1).
    """
    from flatmtl.service.settings import load_settings
    from flatmtl.workers.worker.loop import LOG_FORMAT, Worker, WorkerOptions, default_owner
    from flatmtl.workers.worker.trials import RaySettings

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    settings = load_settings(config)
    ray_settings = RaySettings(
        address=ray_address or settings.ray_address,
        num_cpus=num_cpus,
        object_store_bytes=object_store_mb * 2**20,
        storage=settings.ray_storage,
        auth_token_file=settings.ray_auth_token_file,
        train_max_failures=settings.ray_train_max_failures,
        worker_start_timeout_s=start_timeout,
        collective_timeout_s=collective_timeout,
        job_timeout_s=job_timeout,
    )
    worker = Worker(
        settings,
        ray_settings,
        WorkerOptions(owner=owner or default_owner(), poll_s=poll, max_jobs=max_jobs, exit_when_idle=exit_when_idle),
    )
    worker.install_signal_handlers()
    ran = worker.run()
    click.echo(f"worker {worker.options.owner} ran {ran} job(s)", err=True)
    if worker.forced:
        sys.exit(1)


@click.command("service")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs/service"),
    show_default=True,
    help="Data directory: the SQLite database, artifacts and the API's and worker's logs.",
)
@click.option(
    "--problem",
    type=click.Choice(["auto", "multi_digits", "multi_fashion"]),
    default="auto",
    show_default=True,
    help="auto: multi_fashion when Fashion-MNIST is installed, else multi_digits.",
)
@click.option("--wrapper", type=click.Choice(["samo", "fmtl"]), default="samo", show_default=True)
@click.option("--rho", default="0.001,0.01", show_default=True, help="Comma-separated radii (fmtl: rho_shared).")
@click.option("--alpha", default="0.25,0.75", show_default=True, help="samo: comma-separated alphas (fmtl: rho_task).")
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--processes", type=click.IntRange(min=1), default=1, show_default=True, help="DDP workers per trial.")
@click.option("--train-size", type=click.IntRange(min=64), default=1200, show_default=True)
@click.option("--timeout", type=click.FloatRange(min=10), default=900.0, show_default=True, help="Seconds.")
def demo_service_command(
    out: Path,
    problem: str,
    wrapper: str,
    rho: str,
    alpha: str,
    epochs: int,
    processes: int,
    train_size: int,
    timeout: float,
) -> None:
    """Start the API and a worker (embedded SQLite, local Ray), submit a rho x alpha sweep over REST, follow it
    and print the best trial and where its report and plots are."""
    from flatmtl.workers.worker.service_demo import DemoError, ServiceDemo, default_problem, run_service_demo

    def floats(option: str, text: str) -> list[float]:
        try:
            values = [float(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers", param_hint=option) from None
        if not values or any(v < 0 for v in values):
            raise click.BadParameter(f"{text!r}: give one or more numbers >= 0", param_hint=option)
        return values

    demo = ServiceDemo(
        out=out,
        problem=default_problem() if problem == "auto" else problem,
        wrapper=wrapper,
        rhos=floats("--rho", rho),
        alphas=floats("--alpha", alpha),
        epochs=epochs,
        processes=processes,
        train_size=train_size,
        timeout_s=timeout,
    )
    try:
        run_service_demo(demo, echo=click.echo)
    except DemoError as error:
        raise click.ClickException(str(error)) from None


commands: list[click.Command] = [worker_command]
demo_commands: list[click.Command] = [demo_service_command]
