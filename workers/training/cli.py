"""``flatmtl train`` and ``flatmtl flatness``; ``commands`` is what the ``flatmtl`` group adds.

Exit codes: 0 for a run that succeeded or was stopped on request (``--max-steps``), 1 for a run that
failed (NaN/inf loss...; summary.json says FAILED and why), 2 for a config that cannot run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from flatmtl.workers.training.config import DEVICES, DTYPES
from flatmtl.workers.training.errors import ConfigError


def _fail_config(error: ConfigError) -> None:
    where = f" in {error.source}" if error.source else ""
    click.echo(f"error: invalid config{where}:", err=True)
    for problem in error.problems:
        click.echo(f"  {problem}", err=True)
    raise SystemExit(2)


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    shown = [f"epoch {record['epoch']}/{epochs}", f"loss {record.get('train/loss', float('nan')):.4f}"]
    shown += [f"{key} {value:.4f}" for key, value in record.items() if key.endswith("/accuracy") and value is not None]
    if record.get("delta_m") is not None:
        shown.append(f"Δm% {record['delta_m']:+.2f}")
    return "  ".join(shown)


@click.command("train")
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="JSON lines on stdout (one per epoch, then the summary).")
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), help="Run directory [default: runs/<name>-<time>]."
)
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Continue the run in this directory from its latest checkpoint (CONFIG defaults to its config.json).",
)
@click.option(
    "--max-steps", type=click.IntRange(min=1), default=None, help="Stop (with a checkpoint) after this many steps."
)
@click.option(
    "--dtype", type=click.Choice(DTYPES), default=None, help="Parameter dtype [default: float32, or the run's]."
)
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option(
    "--checkpoint-every", type=click.IntRange(min=0), default=0, show_default=True, help="Steps between saves."
)
@click.option("--keep-epoch-checkpoints", is_flag=True, help="Also keep checkpoints/epoch_NNNN.pt.")
@click.option(
    "--deterministic/--no-deterministic",
    default=None,
    help="Deterministic CUDA kernels, no TF32: CUDA runs repeat exactly [default: the spec's deterministic].",
)
@click.option(
    "--loader-workers",
    type=int,
    default=None,
    help="Processes collating batches ahead (0: a thread) [default: the spec's loader_workers].",
)
def train_command(
    config: Path | None,
    as_json: bool,
    out: Path | None,
    resume_dir: Path | None,
    max_steps: int | None,
    dtype: str | None,
    device: str,
    checkpoint_every: int,
    keep_epoch_checkpoints: bool,
    deterministic: bool | None,
    loader_workers: int | None,
) -> None:
    """Train the TrainSpec in CONFIG (YAML or JSON) into a run directory."""
    from flatmtl.workers.training.config import RunOptions, load_spec
    from flatmtl.workers.training.errors import TrainingFailedError
    from flatmtl.workers.training.local import train
    from flatmtl.workers.training.rundir import RunDirectory

    if resume_dir is not None:
        if out is not None and out.resolve() != resume_dir.resolve():
            raise click.UsageError("--out and --resume name different directories; give one")
        run_dir = resume_dir
        previous = RunDirectory(run_dir)
        config = config or previous.config
        if dtype is None and previous.options.exists():
            dtype = previous.read_json(previous.options)["dtype"]
    elif config is None:
        raise click.UsageError("give CONFIG, or --resume RUN_DIR")
    overrides = {"deterministic": deterministic, "loader_workers": loader_workers}
    try:
        spec = load_spec(config, {key: value for key, value in overrides.items() if value is not None})
        options = RunOptions(
            dtype=dtype or "float32",  # type: ignore[arg-type]
            device=device,  # type: ignore[arg-type]
            max_steps=max_steps,
            checkpoint_every=checkpoint_every,
            keep_epoch_checkpoints=keep_epoch_checkpoints,
            progress=not as_json,
        )
    except ConfigError as error:
        _fail_config(error)
        return
    if resume_dir is None:
        run_dir = out or Path("runs") / f"{spec.name or spec.problem}-{time.strftime('%Y%m%d-%H%M%S')}"

    def on_epoch(record: dict[str, Any]) -> None:
        if as_json:
            click.echo(json.dumps({"event": "epoch", **record}))
        else:
            click.echo(_epoch_line(record, spec.epochs))

    try:
        result = train(spec, run_dir, resume=resume_dir is not None, options=options, on_epoch=on_epoch)
    except ConfigError as error:
        _fail_config(error)
        return
    except TrainingFailedError as failure:
        if as_json:
            summary = RunDirectory(run_dir).read_json(RunDirectory(run_dir).summary)
            click.echo(json.dumps({"event": "summary", **summary}))
        click.echo(f"error: run FAILED: {failure}; see {run_dir / 'summary.json'}", err=True)
        raise SystemExit(1) from None
    if as_json:
        click.echo(json.dumps({"event": "summary", **result.summary}))
    else:
        click.echo(f"{result.status}: {result.summary['steps']} steps, run directory {result.run_dir}")


@click.command("flatness")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--checkpoint", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None)
@click.option("--split", default="test", show_default=True)
@click.option("--samples", type=click.IntRange(min=1), default=512, show_default=True, help="Items the losses use.")
@click.option("--rho", type=click.FloatRange(min=0, min_open=True), default=0.05, show_default=True)
@click.option("--ascent-steps", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--iterations", type=click.IntRange(min=1), default=20, show_default=True, help="Power iterations.")
@click.option("--radius", type=click.FloatRange(min=0), default=0.05, show_default=True, help="r-ball radius.")
@click.option("--draws", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option(
    "--loader-workers",
    type=click.IntRange(min=0),
    default=None,
    help="Processes collating batches (0: a thread) [default: the run's loader_workers].",
)
@click.option("--json", "as_json", is_flag=True)
def flatness_command(
    run_dir: Path,
    checkpoint: Path | None,
    split: str,
    samples: int,
    rho: float,
    ascent_steps: int,
    iterations: int,
    radius: float,
    draws: int,
    seed: int,
    device: str,
    loader_workers: int | None,
    as_json: bool,
) -> None:
    """Per-task rho-sharpness, top Hessian eigenvalue and metrics inside an r-ball, into RUN_DIR/flatness.json."""
    import torch

    from flatmtl.workers.training.flatness import FlatnessSettings, evaluate_run
    from flatmtl.workers.training.local import resolve_device

    if not (run_dir / "config.json").exists():
        raise click.BadParameter(f"{run_dir} holds no config.json; is it a run directory?", param_hint="RUN_DIR")
    settings = FlatnessSettings(
        split=split,
        samples=samples,
        rho=rho,
        ascent_steps=ascent_steps,
        iterations=iterations,
        radius=radius,
        draws=draws,
        seed=seed,
        loader_workers=loader_workers,
    )
    try:
        where = resolve_device(device, 1, torch.cuda.device_count())
    except ConfigError as error:
        _fail_config(error)
    report = evaluate_run(run_dir, settings, checkpoint_path=checkpoint, device=where)
    if as_json:
        click.echo(json.dumps(report))
        return
    for task, values in report["tasks"].items():
        click.echo(
            f"{task:<20} loss {values['loss']:.4f}  rho-sharpness {values['rho_sharpness']:.4f}  "
            f"top Hessian eigenvalue {values['hessian_top_eigenvalue']:.4f}"
        )
    for key, value in report["perturbed_mean"].items():
        click.echo(f"{key:<32} {report['metrics'][key]:.4f} -> {value:.4f} in the r={radius:g} ball")


commands = [train_command, flatness_command]
