"""Fault injection on the real service: PostgreSQL stopped and restarted under a worker and the API, a full
artifact filesystem, SIGTERM to a worker mid-job. Nothing acknowledged is lost, no job is trained by two
runs at once, the worker lives through all of it, and the API says 503 (with Retry-After) while it cannot
reach the database and 2xx as soon as it can again."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from flatmtl.service import queue
from flatmtl.service.db import Database
from flatmtl.service.jobs import get_job, list_events
from flatmtl.service.models import Metric
from flatmtl.service.settings import Settings
from flatmtl.service.specs.train import TrainSpec
from flatmtl.service.tokens import create_token
from flatmtl.workers.worker.service_demo import API_COMMAND, api_client, free_port, process, service_env, wait_healthy
from tests.worker.cluster import line_count, require_ray, start_worker, stop, tiny, wait_until

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "start_postgres.sh"
LEASE_SECONDS = 12
pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


@dataclass
class Postgres:
    """A private PostgreSQL cluster that a test may stop (keeping its data) and start again on the same port."""

    url: str
    root: str

    def _run(self, command: str) -> None:
        env = {**os.environ, "FLATMTL_TEST_POSTGRES_DIR": self.root}
        subprocess.run(["bash", str(SCRIPT), command], env=env, check=True, capture_output=True, timeout=120)

    def down(self) -> None:
        self._run("down")

    def up(self) -> None:
        self._run("up")


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    started = subprocess.run(["bash", str(SCRIPT)], check=True, capture_output=True, text=True, timeout=600)
    exports = dict(re.findall(r"export (\w+)='([^']*)'", started.stdout))
    server = Postgres(exports["FLATMTL_TEST_POSTGRES_URL"], exports["FLATMTL_TEST_POSTGRES_DIR"])
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.up()  # a test that failed mid-outage left it down
        server._run("stop")


def log_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def submit_until_acknowledged(client: httpx.Client, key: str, spec: dict[str, Any], deadline: float) -> int:
    """POST with an idempotency key until a 2xx; only 503 with Retry-After may come before it."""
    while True:
        response = client.post("/v1/jobs", json={"spec": spec, "idempotency_key": key})
        if response.status_code in (200, 201):
            return int(response.json()["id"])
        assert response.status_code == 503, response.text
        assert response.headers.get("Retry-After"), response.headers
        assert time.monotonic() < deadline, f"{key} not acknowledged in time"
        time.sleep(0.5)


def test_postgres_outages_lose_no_job_and_run_none_twice(postgres: Postgres, tmp_path: Path) -> None:
    require_ray()
    settings = Settings(data_dir=tmp_path, database_url=postgres.url)
    db = Database.from_settings(settings)
    db.migrate()
    token = create_token(db, settings.token_key(), "tester", ["submit"])
    env = service_env(tmp_path, FLATMTL_DATABASE_URL=postgres.url, FLATMTL_LEASE_SECONDS=str(LEASE_SECONDS))
    # the lease is long enough that a stop and start of the server (a second or two) fits in half of it
    worker_log, api_log = tmp_path / "worker.log", tmp_path / "api.log"
    port = free_port()
    worker = start_worker(env, worker_log)
    try:
        with (
            process([*API_COMMAND, "--port", str(port)], env, api_log) as api,
            api_client(f"http://127.0.0.1:{port}", token) as client,
        ):
            wait_healthy(client, api, api_log, timeout_s=60)
            wait_until(lambda: "polling" in log_text(worker_log), 180, "the worker to poll")

            # An idle worker and the API through an outage shorter, then one longer, than the lease.
            for seconds in (2, LEASE_SECONDS + 2):
                postgres.down()
                refused = client.get("/v1/jobs")
                assert refused.status_code == 503 and refused.headers["Retry-After"], refused.text
                time.sleep(seconds)
                postgres.up()
                first = client.get("/v1/jobs")  # on the same keep-alive connection, through a stale pool
                assert first.status_code == 200, first.text
                assert worker.poll() is None, log_text(worker_log)[-3000:]

            # A running job through an outage shorter than half the lease (the run goes on under the same lease)
            # and one longer than the lease (stopped before its lease expires, released, then resumed), with a
            # burst of submissions while the database is down.
            spec = tiny(epochs=6, problem_options={"train_size": 512, "test_size": 64})
            job_id = int(client.post("/v1/jobs", json={"spec": spec}).json()["id"])
            run_dir = tmp_path / "artifacts" / "jobs" / str(job_id) / "run"
            wait_until(lambda: line_count(run_dir / "metrics_steps.jsonl") > 4, 240, "the job to train")
            postgres.down()
            postgres.up()
            trained = line_count(run_dir / "metrics_steps.jsonl")
            wait_until(lambda: line_count(run_dir / "metrics_steps.jsonl") > trained + 4, 120, "training to go on")
            assert client.get(f"/v1/jobs/{job_id}").json()["lease_owner"] is not None

            postgres.down()
            burst_spec = tiny(problem_options={"train_size": 0})  # fails at once when claimed: cheap to run
            keys = [f"burst-{i}" for i in range(12)]
            refused = {
                client.post("/v1/jobs", json={"spec": burst_spec, "idempotency_key": key}).status_code for key in keys
            }
            time.sleep(LEASE_SECONDS + 2)
            postgres.up()
            assert refused == {503}
            deadline = time.monotonic() + 60
            burst = {key: submit_until_acknowledged(client, key, burst_spec, deadline) for key in keys}

            def ended(ids: list[int]) -> bool:
                assert worker.poll() is None, log_text(worker_log)[-3000:]
                states = [client.get(f"/v1/jobs/{i}").json()["state"] for i in ids]
                return all(state in ("succeeded", "failed", "cancelled") for state in states)

            wait_until(lambda: ended([job_id, *burst.values()]), 300, "every job to end", interval_s=1.0)
    finally:
        stop(worker)

    with db.read() as session:
        job = get_job(session, job_id)
        kinds = [event.kind for event in list_events(session, job_id)]
        burst_jobs = [get_job(session, i) for i in burst.values()]
        duplicates = session.execute(
            select(Metric.trial_index, Metric.step, Metric.name)
            .where(Metric.job_id == job_id)
            .group_by(Metric.trial_index, Metric.step, Metric.name)
            .having(func.count() > 1)
        ).all()
    db.dispose()
    assert worker.returncode == 0, log_text(worker_log)[-3000:]  # SIGTERM to the idle worker: a clean exit
    assert "SIGTERM: shutting down" in log_text(worker_log)
    assert job.state == "succeeded", job.error
    assert "released" in kinds or "lease_expired" in kinds, kinds
    assert duplicates == []
    assert len(set(burst.values())) == len(keys)
    assert all(j.state == "failed" and j.attempt == 1 for j in burst_jobs), [(j.state, j.error) for j in burst_jobs]

    # Every later attempt was claimed only after the earlier run had ended.
    lines = (run_dir.parent / "job.log").read_text().splitlines()
    claims = [i for i, line in enumerate(lines) if " claimed by " in line]
    ends = [i for i, line in enumerate(lines) if "ended without an outcome" in line]
    assert len(claims) == kinds.count("claimed") == 2  # the short outage cost no claim, the long one one
    for earlier, later in itertools.pairwise(claims):
        assert any(earlier < end < later for end in ends), lines


def test_sigterm_releases_the_job_a_second_signal_forces_and_the_next_worker_resumes_it(tmp_path: Path) -> None:
    """The first worker gets one SIGTERM (the job stops at the grace period's end, exit 0); the second gets two
    while the job runs, with a grace period longer than the job (the second signal stops it at once, exit 1);
    both release the job, and a third worker finishes it from the checkpoint."""
    require_ray()
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'flatmtl.db'}")
    db = Database.from_settings(settings)
    db.migrate()
    spec = TrainSpec.model_validate(tiny(epochs=3, problem_options={"train_size": 512, "test_size": 64}))
    job, _ = queue.submit(db, spec)
    env = service_env(tmp_path, FLATMTL_LEASE_SECONDS="30", FLATMTL_SHUTDOWN_GRACE_S="2")
    run_dir = tmp_path / "artifacts" / "jobs" / str(job.id) / "run"
    job_log = run_dir.parent / "job.log"

    def released() -> None:
        with db.read() as session:
            current = get_job(session, job.id)
        assert current.state == "queued" and current.lease_owner is None, (current.state, current.error)

    first = start_worker(env, tmp_path / "worker-1.log", "--max-jobs", "1")
    try:
        wait_until(lambda: (run_dir / "checkpoints" / "latest.pt").exists(), 240, "the first checkpoint")
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0, log_text(tmp_path / "worker-1.log")[-3000:]
    finally:
        stop(first)
    released()
    first_log = log_text(tmp_path / "worker-1.log")
    assert "SIGTERM: shutting down" in first_log and f"job {job.id} may run 2 s more" in first_log, first_log[-3000:]

    patient = {**env, "FLATMTL_SHUTDOWN_GRACE_S": "600"}
    second = start_worker(patient, tmp_path / "worker-2.log", "--max-jobs", "1")
    try:
        wait_until(lambda: log_text(job_log).count(" claimed by ") >= 2, 120, "the second claim")
        second.send_signal(signal.SIGTERM)
        wait_until(lambda: "may run 600 s more" in log_text(tmp_path / "worker-2.log"), 30, "the grace period")
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 1, log_text(tmp_path / "worker-2.log")[-3000:]
    finally:
        stop(second)
    released()
    assert "SIGTERM again: forcing the shutdown" in log_text(tmp_path / "worker-2.log")

    third = start_worker(env, tmp_path / "worker-3.log", "--max-jobs", "1")
    try:
        assert third.wait(timeout=240) == 0, log_text(tmp_path / "worker-3.log")[-3000:]
    finally:
        stop(third)
    with db.read() as session:
        done = get_job(session, job.id)
        kinds = [event.kind for event in list_events(session, job.id)]
    db.dispose()
    assert done.state == "succeeded", done.error
    assert kinds.count("released") == 2 and "lease_expired" not in kinds
    assert "trial 0 resumes from its checkpoint" in job_log.read_text()


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (needs root, as CI has)."""
    path.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {path} (run as root, as CI does): {mounted.stderr.decode()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_artifact_disk_fails_the_job_with_enospc_and_the_worker_goes_on(tmp_path: Path) -> None:
    require_ray()
    with small_filesystem(tmp_path / "artifacts", "1m") as artifacts:
        settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'flatmtl.db'}")
        db = Database.from_settings(settings)
        db.migrate()
        free = os.statvfs(artifacts)
        filler = artifacts / "filler"
        filler.write_bytes(b"\0" * (free.f_bavail * free.f_frsize - 64 * 1024))  # room for the log, not a checkpoint
        job, _ = queue.submit(db, TrainSpec.model_validate(tiny(problem_options={"train_size": 256, "test_size": 64})))
        worker_log = tmp_path / "worker.log"
        worker = start_worker(service_env(tmp_path, FLATMTL_LEASE_SECONDS="30"), worker_log)
        try:

            def ended(job_id: int) -> Any:
                assert worker.poll() is None, log_text(worker_log)[-3000:]
                with db.read() as session:
                    found = get_job(session, job_id)
                return found if found.state in ("succeeded", "failed") else None

            failed = wait_until(lambda: ended(job.id), 240, "the job to fail", interval_s=0.5)
            assert failed.state == "failed" and "ENOSPC" in failed.error, failed.error
            assert "No space left on device" in failed.error and str(artifacts) in failed.error, failed.error

            filler.unlink()
            cheap, _ = queue.submit(db, TrainSpec.model_validate(tiny(problem_options={"train_size": 0})))
            refused = wait_until(lambda: ended(cheap.id), 120, "the next job", interval_s=0.5)
            assert refused.state == "failed" and "train_size" in refused.error, refused.error  # the worker ran it
        finally:
            stop(worker)
            db.dispose()
