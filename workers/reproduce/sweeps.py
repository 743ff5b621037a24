"""The report's Ray Tune sweeps, submitted through the service the way a user submits them.

A claim that studies hyper-parameters asks for SweepSpec documents. They run on the product's own path: the
REST API and a worker (a local Ray; every trial a Ray Tune trial of a Ray Train run) on an embedded SQLite
database under the runs folder, started and followed with the helpers of ``flatmtl demo service``. Each
sweep is submitted with an idempotency key made from its spec, so the next report finds a finished sweep in
the database and reuses it, as finished training runs are reused; the worker starts only when a sweep still
has to run. A sweep job that does not succeed stops the report (its numbers would be missing, not measured);
the next run retries it, keeping its finished trials. A diverging trial is a result: the job succeeds and the
trial is reported as failed. What the claim analyzes is what the API returns: each trial's config, state and
metrics from ``/v1/jobs/{id}/trials``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from flatmtl.service.artifacts import job_dir
from flatmtl.service.specs.sweep import SweepSpec
from flatmtl.workers.worker.plan import search_points
from flatmtl.workers.worker.service_demo import (
    API_COMMAND,
    TERMINAL,
    WORKER_COMMAND,
    api_call,
    api_client,
    create_demo_token,
    follow,
    free_port,
    process,
    service_env,
    wait_healthy,
)

SERVICE_FOLDER = "service"
TRIAL_ACTOR_CPUS = 0.01
"""What a trial's Tune actor reserves next to its rank (``flatmtl.workers.worker.trials.TRIAL_ACTOR_CPUS``)."""


@dataclass(frozen=True)
class SweepRequest:
    """A SweepSpec document; its key names it in the database (the idempotency key) and in the results."""

    spec: dict[str, Any]

    @property
    def key(self) -> str:
        digest = hashlib.sha256(json.dumps(self.spec, sort_keys=True).encode()).hexdigest()[:16]
        return f"reproduce-{digest}"


@dataclass(frozen=True)
class Trial:
    """One trial as the API reports it, plus the run's resolved config from its run directory."""

    index: int
    config: dict[str, Any]
    state: str
    best_metric: float | None
    last: dict[str, float]
    run_dir: Path
    spec: dict[str, Any]

    @property
    def succeeded(self) -> bool:
        return self.state == "succeeded"

    def metric(self, name: str) -> float:
        """The final epoch's value of ``name`` (``test/mean/accuracy``...); NaN unless the trial succeeded."""
        value = self.last.get(name) if self.succeeded else None
        return math.nan if value is None else float(value)


@dataclass(frozen=True)
class SweepOutcome:
    key: str
    spec: dict[str, Any]
    job_id: int
    state: str
    error: str | None
    seconds: float
    """The job's own duration (start to finish), also for a sweep reused from an earlier invocation."""
    reused: bool
    trials: list[Trial]


def execute(
    requests: Sequence[SweepRequest],
    runs_dir: Path,
    *,
    concurrency: int,
    timeout_s: float,
    echo: Callable[[str], None] = print,
) -> dict[str, SweepOutcome]:
    """Run every sweep through the service under ``runs_dir/service``; the outcomes by request key."""
    unique = {request.key: request for request in requests}
    if not unique:
        return {}
    root = (runs_dir / SERVICE_FOLDER).resolve()
    root.mkdir(parents=True, exist_ok=True)
    token = create_demo_token(root, "reproduce")
    port = free_port()
    env = service_env(root, FLATMTL_API_PORT=str(port))
    api_log, worker_log = root / "api.log", root / "worker.log"
    url = f"http://127.0.0.1:{port}"
    with ExitStack() as stack:
        api = stack.enter_context(process([*API_COMMAND, "--port", str(port)], env, api_log))
        client = stack.enter_context(api_client(url, token))
        wait_healthy(client, api, api_log)
        jobs = {key: submit(client, request, echo) for key, request in unique.items()}
        pending = [key for key, job in jobs.items() if job["state"] not in TERMINAL]
        if pending:
            cpus = math.ceil(concurrency * (1 + TRIAL_ACTOR_CPUS))
            worker = stack.enter_context(
                process([*WORKER_COMMAND, "--poll", "0.5", "--num-cpus", str(cpus)], env, worker_log)
            )
            echo(f"service at {url} on {root / 'flatmtl.db'}; worker log {worker_log}")
            for key in pending:
                jobs[key] = follow(client, jobs[key]["id"], worker, echo, timeout_s=timeout_s, worker_log=worker_log)
        return {key: outcome(client, root, unique[key], job, reused=key not in pending) for key, job in jobs.items()}


def submit(client: httpx.Client, request: SweepRequest, echo: Callable[[str], None]) -> dict[str, Any]:
    """POST the sweep (idempotent by key); a failed or cancelled earlier attempt is queued again."""
    job = api_call(client, "POST", "/v1/jobs", json={"spec": request.spec, "idempotency_key": request.key})
    name = request.spec.get("name") or request.key
    if job["state"] in ("failed", "cancelled"):
        echo(f"sweep {name}: job {job['id']} ended {job['state']} earlier ({job['error']}); retrying it")
        job = api_call(client, "POST", f"/v1/jobs/{job['id']}/retry")
    elif job["state"] == "succeeded":
        echo(f"sweep {name}: job {job['id']} finished earlier; reusing its trials")
    else:
        echo(f"sweep {name}: job {job['id']} {job['state']} ({len(points(request))} trials)")
    return job


def points(request: SweepRequest) -> list[dict[str, Any]]:
    return search_points(SweepSpec.model_validate(request.spec))


def outcome(
    client: httpx.Client, root: Path, request: SweepRequest, job: dict[str, Any], *, reused: bool
) -> SweepOutcome:
    folder = job_dir(root / "artifacts", job["id"])
    trials = []
    for item in api_call(client, "GET", f"/v1/jobs/{job['id']}/trials")["items"]:
        result = item["result"] or {}
        run_dir = folder / result.get("run_dir", f"trials/{item['trial_index']:03d}")
        config = run_dir / "config.json"
        trials.append(
            Trial(
                index=item["trial_index"],
                config=item["config"],
                state=item["state"],
                best_metric=item["best_metric"],
                last=dict(result.get("last") or {}),
                run_dir=run_dir,
                spec=json.loads(config.read_text()) if config.exists() else {},
            )
        )
    return SweepOutcome(
        key=request.key,
        spec=request.spec,
        job_id=job["id"],
        state=job["state"],
        error=job["error"],
        seconds=duration(job),
        reused=reused,
        trials=sorted(trials, key=lambda trial: trial.index),
    )


def duration(job: dict[str, Any]) -> float:
    if not job.get("started_at") or not job.get("finished_at"):
        return math.nan
    started, finished = (datetime.datetime.fromisoformat(job[k]) for k in ("started_at", "finished_at"))
    return (finished - started).total_seconds()
