"""``flatmtl reproduce``: train what the nine claims need, analyze each, write the report.

Output, under ``out`` (``docs/`` by default): ``results.md`` (the report), ``results/*.png`` (figures),
``results/results.json`` (every number, check and verdict) and ``results/configs.json`` (the scale, the
machine, the wall time, every run's exact TrainSpec with its seed and status, and every sweep's SweepSpec with
its trials' configs, seeds and states). Training runs go through the engine first; then the sweeps a claim
asks for (``sweeps(context)``) go through the service (``flatmtl.workers.reproduce.sweeps``).
"""

from __future__ import annotations

import datetime
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from flatmtl.workers.reproduce import machine, runs, sweeps
from flatmtl.workers.reproduce.claims import (
    calibration,
    conflict,
    cost,
    flat_methods,
    optimizers,
    random_weighting,
    sensitivity,
    stl_mtl,
    toy,
)
from flatmtl.workers.reproduce.claims.base import ClaimResult, Context
from flatmtl.workers.reproduce.report import write_markdown
from flatmtl.workers.reproduce.scale import Scale

CLAIMS: tuple[ModuleType, ...] = (
    conflict,
    flat_methods,
    cost,
    random_weighting,
    optimizers,
    stl_mtl,
    toy,
    calibration,
    sensitivity,
)
FIGURES = "results"


@dataclass(frozen=True)
class Report:
    markdown: Path
    results: Path
    configs: Path
    claims: list[ClaimResult]
    wall_seconds: float


def reproduce(
    scale: Scale,
    out: Path,
    runs_dir: Path,
    *,
    mnist_dir: Path | None,
    echo: Callable[[str], None] = print,
) -> Report:
    started = time.perf_counter()
    figures = out / FIGURES
    figures.mkdir(parents=True, exist_ok=True)
    for stale in figures.glob("claim*.png"):  # the folder holds exactly this report's figures
        stale.unlink()
    host = machine.describe()
    context = Context(scale=scale, figures=figures, mnist_dir=mnist_dir, echo=echo)
    requests = [request for claim in CLAIMS for request in claim.requests(context)]
    echo(f"reproduce ({scale.name}): {len(runs.merge(requests))} training runs on {scale.workers} worker(s)")
    records, reused = runs.execute(
        requests, runs_dir, workers=scale.workers, eval_batch_size=scale.eval_batch_size, echo=echo
    )
    training_seconds = time.perf_counter() - started
    ledger = training_ledger(runs_dir, training_seconds if reused < len(records) else 0.0)
    sweep_requests = [request for claim in CLAIMS if hasattr(claim, "sweeps") for request in claim.sweeps(context)]
    echo(f"{len(sweep_requests)} sweep(s) through the service, {scale.workers} trial(s) at a time")
    outcomes = sweeps.execute(
        sweep_requests, runs_dir, concurrency=scale.workers, timeout_s=scale.sweep_timeout_s, echo=echo
    )
    sweep_seconds = time.perf_counter() - started - training_seconds
    results = runs.Results(records, outcomes)
    claims = []
    for claim in CLAIMS:
        echo(f"claim {claim.NUMBER}: {claim.TITLE}")
        claims.append(claim.analyze(context, results))
    wall = time.perf_counter() - started
    stale = stale_runs(runs_dir, records)
    timing = {
        "wall_seconds": wall,
        "training_seconds": training_seconds,
        "sweep_seconds": sweep_seconds,
        "analysis_seconds": wall - training_seconds - sweep_seconds,
        "runs_reused": reused,
        "run_seconds_sum": sum(record.wall_seconds for record in records.values()),
        "training_seconds_all_invocations": ledger["seconds"],
        "training_invocations": ledger["invocations"],
        "stale_runs": len(stale),
        "stale_run_seconds_sum": math.fsum(stale.values()),
        "sweeps_reused": sum(outcome.reused for outcome in outcomes.values()),
        "sweep_trials": sum(len(outcome.trials) for outcome in outcomes.values()),
        "sweep_job_seconds_sum": math.fsum(outcome.seconds for outcome in outcomes.values()),
    }
    generated = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    configs = write_configs(figures / "configs.json", scale, host, timing, records, outcomes, runs_dir, mnist_dir)
    results_path = figures / "results.json"
    results_path.write_text(
        json.dumps(
            strict_json({"scale": scale.name, "generated": generated, "claims": [c.as_dict() for c in claims]}),
            indent=1,
        )
        + "\n"
    )
    markdown = write_markdown(
        out / "results.md", scale, host, timing, generated, claims, len(records), len(outcomes), FIGURES
    )
    echo(f"wrote {markdown}, {results_path}, {configs} and {sum(len(c.figures) for c in claims)} figures")
    return Report(markdown, results_path, configs, claims, wall)


def training_ledger(runs_dir: Path, seconds: float) -> dict[str, float]:
    """Training wall time summed over the invocations that trained runs in ``runs_dir``: a report whose runs were
    all reused (say, after a change to the analysis) still states what training them took."""
    path = runs_dir / "training_time.json"
    ledger = json.loads(path.read_text()) if path.exists() else {"seconds": 0.0, "invocations": 0}
    if seconds > 0:
        ledger = {"seconds": ledger["seconds"] + seconds, "invocations": ledger["invocations"] + 1}
        path.write_text(json.dumps(ledger) + "\n")
    return ledger


def stale_runs(runs_dir: Path, records: dict[str, runs.RunRecord]) -> dict[str, float]:
    """Finished run directories in ``runs_dir`` that this report no longer asks for (a claim's design changed),
    with their run times: the training ledger still counts the time they took."""
    current = {record.directory.name for record in records.values()}
    stale = {}
    for summary in runs_dir.glob("*/summary.json"):
        if summary.parent.name not in current:
            stale[summary.parent.name] = float(json.loads(summary.read_text()).get("wall_seconds") or 0.0)
    return stale


def strict_json(value: Any) -> Any:
    """Strict JSON (NaN becomes null), as the run files are written."""
    from flatmtl.workers.training.rundir import json_ready

    return json_ready(value)


def write_configs(
    path: Path,
    scale: Scale,
    host: dict[str, Any],
    timing: dict[str, float],
    records: dict[str, runs.RunRecord],
    outcomes: dict[str, sweeps.SweepOutcome],
    runs_dir: Path,
    mnist_dir: Path | None,
) -> Path:
    document = {
        "scale": scale.as_dict(),
        "machine": host,
        "timing": timing,
        "mnist_dir": None if mnist_dir is None else str(mnist_dir),
        "runs": [
            {
                "key": key,
                "directory": record.directory.name,
                "status": record.status,
                "seed": record.spec["seed"],
                "wall_seconds": record.wall_seconds,
                "spec": record.spec,
            }
            for key, record in sorted(records.items(), key=lambda item: item[1].directory.name)
        ],
        "sweeps": [
            {
                "key": key,
                "job_id": outcome.job_id,
                "state": outcome.state,
                "error": outcome.error,
                "seconds": outcome.seconds,
                "reused": outcome.reused,
                "spec": outcome.spec,
                "trials": [
                    {
                        "index": trial.index,
                        "config": trial.config,
                        "state": trial.state,
                        "seed": trial.spec.get("seed"),
                        "run_dir": trial.run_dir.relative_to(runs_dir.resolve()).as_posix(),
                        "spec": trial.spec,
                    }
                    for trial in outcome.trials
                ],
            }
            for key, outcome in outcomes.items()
        ],
    }
    path.write_text(json.dumps(strict_json(document), indent=1) + "\n")
    return path
