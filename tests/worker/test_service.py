"""The service end to end on a real local Ray: the API and a worker as subprocesses on one SQLite database.

One worker serves the module's jobs in order (a Ray start is the expensive part on 2 cores). The lease is
short, so heartbeats come every 1.5 s and a cancellation reaches the running trials within seconds. Runs persist
to a storage directory outside the service's data directory, as a path every node of a cluster mounts would be.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from flatmtl.service.cli import submit
from flatmtl.workers.worker.service_demo import (
    api_call,
    create_demo_token,
    service_env,
)
from tests.worker.cluster import (
    TASKS,
    Service,
    line_count,
    require_ray,
    running_service,
    steps_per_epoch,
    tiny,
    wait_until,
)

LEASE_SECONDS = 6
SHARED_STORAGE = "shared-storage"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    require_ray()
    out = tmp_path_factory.mktemp("service")
    token = create_demo_token(out, "tester")
    env = service_env(out, FLATMTL_LEASE_SECONDS=str(LEASE_SECONDS), FLATMTL_RAY_STORAGE=str(out / SHARED_STORAGE))
    with running_service(out, env, token) as service:
        yield service


def accuracy_mean(record: dict[str, Any]) -> float:
    return sum(record[f"test/{task}/accuracy"] for task in TASKS) / len(TASKS)


@pytest.mark.timeout(420)
def test_a_sweep_of_ddp_trials_through_rest(service: Service) -> None:
    """Four 2-rank trials, three at a time (mostly Ray worker start-up on 2 cores); each trial's checkpoints are in
    the shared storage directory, and the worker collected what the API serves from there."""
    rhos, alphas = [0.001, 0.01], [0.2, 0.8]
    sweep = {
        "kind": "sweep",
        "base": tiny(method={"wrapper": {"name": "samo"}}),
        "space": {"wrapper.rho": {"type": "grid", "values": rhos}, "wrapper.alpha": {"type": "grid", "values": alphas}},
        "metric": "test/mean/accuracy",
        "mode": "max",
    }
    job_id = service.submit(sweep)
    job = service.wait_ended(job_id, 360)
    assert job["state"] == "succeeded", job["error"]

    trials = api_call(service.client, "GET", f"/v1/jobs/{job_id}/trials")["items"]
    assert [t["state"] for t in trials] == ["succeeded"] * 4
    configs = {(t["config"]["method.wrapper.hparams.rho"], t["config"]["method.wrapper.hparams.alpha"]) for t in trials}
    assert configs == set(itertools.product(rhos, alphas))
    for trial in trials:  # what the worker stored, against the run's own files
        run = service.job_dir(job_id) / trial["result"]["run_dir"]
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "SUCCEEDED" and summary["processes"] == 2
        config = json.loads((run / "config.json").read_text())
        assert config["method"]["wrapper"]["hparams"]["rho"] == trial["config"]["method.wrapper.hparams.rho"]
        epochs = [json.loads(line) for line in (run / "metrics_epochs.jsonl").read_text().splitlines()]
        assert len(epochs) == 2
        assert trial["best_metric"] == pytest.approx(max(accuracy_mean(e) for e in epochs))
    storage = service.out / SHARED_STORAGE / "jobs" / str(job_id) / "train"
    for index in range(4):
        assert any((storage / f"trial-{index:03d}").rglob("epoch_0002/checkpoints/latest.pt")), index
    assert not (service.job_dir(job_id) / "ray").exists(), "runs persist in the shared storage, not per job"
    best = max(trials, key=lambda t: t["best_metric"])
    assert job["result"]["best_metric"] == best["best_metric"]
    assert job["result"]["best_config"] == best["config"]
    assert job["result"]["best_plots"], "the best trial's plots are listed"

    history = api_call(service.client, "GET", f"/v1/jobs/{job_id}/metrics", params={"name": "test/mean/accuracy"})
    series = {s["trial_index"]: s for s in history["series"]}
    assert sorted(series) == [0, 1, 2, 3]
    assert all(s["steps"] == [steps_per_epoch(), 2 * steps_per_epoch()] for s in series.values())
    logs = api_call(service.client, "GET", f"/v1/jobs/{job_id}/logs", params={"tail": 200})["lines"]
    assert any("trial 3 succeeded" in line for line in logs)


def test_a_nan_run_fails_with_the_reason(service: Service) -> None:
    diverging = tiny(method={"weighting": {"name": "famo", "hparams": {"lr": 1e300}}})  # logits overflow at once
    job_id = service.submit(diverging)
    job = service.wait_ended(job_id, 180)
    assert job["state"] == "failed"
    assert "NaN" in job["error"] and "step" in job["error"], job["error"]
    summary = json.loads((service.job_dir(job_id) / "run" / "summary.json").read_text())
    assert summary["status"] == "FAILED" and summary["error"]["message"] in job["error"]


def test_cancellation_stops_the_running_ranks_within_seconds(service: Service) -> None:
    job_id = service.submit(tiny(epochs=1000))
    steps_file = service.job_dir(job_id) / "run" / "metrics_steps.jsonl"
    wait_until(lambda: line_count(steps_file) >= 3, 180, "training to be under way")
    cancelled_at = time.monotonic()
    assert api_call(service.client, "POST", f"/v1/jobs/{job_id}/cancel")["state"] == "cancelled"

    def quiet() -> bool:  # no step logged for 3 s: the ranks are gone
        before = line_count(steps_file)
        time.sleep(3)
        return line_count(steps_file) == before

    wait_until(quiet, 60, "the ranks to stop", interval_s=0)
    stopped_after = time.monotonic() - cancelled_at - 3
    assert stopped_after < 20, f"training went on for {stopped_after:.1f} s after the cancellation"
    log = (service.job_dir(job_id) / "job.log").read_text()
    assert "stopping the run: cancelled" in log
    wait_until(
        lambda: "ended without an outcome: cancelled" in (service.job_dir(job_id) / "job.log").read_text(),
        60,
        "Tune to end",
    )
    job = service.job(job_id)
    assert job["state"] == "cancelled" and job["error"] is None
    assert line_count(steps_file) < 1000 * steps_per_epoch()


def test_a_trials_exception_reaches_the_jobs_error_over_rest_and_cli(service: Service, tmp_path: Path) -> None:
    """A rank's exception, raised inside Ray Train inside a Tune trial: its type, message and last traceback lines."""
    spec = tmp_path / "job.yaml"
    spec.write_text(json.dumps({"spec": tiny(batch_size=1_000_000, problem_options={"train_size": 256})}))
    token = service.client.headers["Authorization"].removeprefix("Bearer ")
    submitted = CliRunner().invoke(
        submit, [str(spec), "--wait", "--poll", "0.5", "--url", str(service.client.base_url), "--token", token]
    )
    assert submitted.exit_code == 1, submitted.output
    reason = "ValueError: batch_size=1000000 x processes=2 = 2000000 exceeds the 256 training samples"
    assert reason in submitted.output, submitted.output
    job = service.job(int(submitted.output.split()[0]))
    assert job["state"] == "failed" and job["error"].startswith(reason), job["error"]
    assert 'File "' in job["error"] and "line" in job["error"], "the traceback's last lines come with it"
