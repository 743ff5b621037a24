"""The worker's side of the queue without Ray: the keeper's heartbeats, a job that cannot run, and the sink
that stores what the trials report (metrics, trial rows, the sweep's best trial), fenced by the lease."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from flatmtl.service import code, queue
from flatmtl.service.db import Database
from flatmtl.service.jobs import get_job, list_trials, metric_history
from flatmtl.service.models import utcnow
from flatmtl.service.settings import Settings
from flatmtl.service.specs.sweep import SweepSpec
from flatmtl.service.specs.train import TrainSpec
from flatmtl.service.telemetry.names import POINT_CONFLICT_RATIO, POINT_SAMPLES, POINT_STEP_SECONDS
from flatmtl.service.telemetry.snapshot import database_snapshot
from flatmtl.workers.training import RunDirectory
from flatmtl.workers.worker.contracts import TELEMETRY_KEY
from flatmtl.workers.worker.job import JobRun
from flatmtl.workers.worker.loop import Keeper, Worker, WorkerOptions
from flatmtl.workers.worker.plan import JobPaths, plan_job
from flatmtl.workers.worker.trials import RaySettings

BASE: dict[str, Any] = {"problem": "multi_digits", "model": "mlp", "epochs": 2, "method": {"wrapper": "samo"}}


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'flatmtl.db'}")
    database.migrate()
    yield database
    database.dispose()


def claimed(db: Database, spec: TrainSpec | SweepSpec) -> queue.Lease:
    queue.submit(db, spec)
    lease = queue.claim(db, "tester", 60)
    assert lease is not None
    return lease


def keep(db: Database, lease: queue.Lease, lease_seconds: float) -> tuple[Keeper, list[str], threading.Event]:
    reasons: list[str] = []
    told = threading.Event()

    def on_stop(reason: str) -> None:
        reasons.append(reason)
        told.set()

    keeper = Keeper(db, lease, lease_seconds, progress=lambda: 0.5, on_stop=on_stop, reap=lambda: None)
    keeper.start()
    return keeper, reasons, told


def test_the_keeper_extends_the_lease_and_reports_a_cancellation(db: Database) -> None:
    lease = claimed(db, TrainSpec.model_validate(BASE))
    keeper, reasons, told = keep(db, lease, 0.4)  # a heartbeat every 0.1 s
    threading.Event().wait(0.5)
    with db.read() as session:
        job = get_job(session, lease.job_id)
        assert job.progress == 0.5 and job.lease_expires_at is not None and job.lease_expires_at > utcnow()
    assert not told.is_set()
    queue.cancel(db, lease.job_id, user="someone")
    assert told.wait(2.0) and reasons == ["cancelled"]
    keeper.finish()


def test_the_keeper_reports_a_lease_taken_by_the_reaper_as_lost(db: Database) -> None:
    lease = claimed(db, TrainSpec.model_validate(BASE))
    assert queue.reap(db, now=utcnow() + timedelta(seconds=120)) == {lease.job_id: "queued"}
    keeper, reasons, told = keep(db, lease, 0.4)
    assert told.wait(2.0) and reasons == ["lost"]
    keeper.finish()


def test_a_job_whose_data_is_missing_fails_before_ray_with_the_field(db: Database, tmp_path: Path) -> None:
    lease = claimed(db, TrainSpec.model_validate({**BASE, "problem": "multi_mnist", "problem_options": {}}))
    settings = Settings(data_dir=tmp_path, database_url=str(db.url))
    worker = Worker(settings, RaySettings(address="ray://nowhere:1"), WorkerOptions(owner="tester"))
    worker.run_job(lease)  # never reaches Ray: the address above would fail
    with db.read() as session:
        job = get_job(session, lease.job_id)
    assert job.state == "failed"
    assert "problem_options" in job.error and "data_dir" in job.error
    assert "the job cannot run" in JobPaths(settings.artifacts, lease.job_id).log.read_text()
    worker.db.dispose()


def sweep_run(db: Database, tmp_path: Path, mode: str) -> JobRun:
    sweep = SweepSpec.model_validate(
        {
            "kind": "sweep",
            "base": BASE,
            "space": {"wrapper.rho": {"type": "grid", "values": [0.01, 0.1, 0.2]}},
            "metric": "test/mean/accuracy",
            "mode": mode,
        }
    )
    lease = claimed(db, sweep)
    plan = plan_job(lease.job_id, lease.spec, tmp_path)
    return JobRun(db, lease, plan, JobPaths(tmp_path, lease.job_id), logging.getLogger("test"))


def report(run: JobRun, index: int, epoch: int, accuracy: float) -> None:
    run.trial_result(index, {"epoch": epoch, "step": 10 * epoch, "test/mean/accuracy": accuracy, "train/loss": 1.0})


def finish(run: JobRun, index: int, status: str) -> None:
    rundir = RunDirectory(run.plan.trials[index].run_dir)
    rundir.create()
    rundir.write_json(rundir.summary, {"status": status, "final": {}})
    run.trial_ended(index, None)


@pytest.mark.parametrize("mode", ["max", "min"])
def test_the_sweep_outcome_is_the_trial_with_the_best_value_of_the_metric(
    db: Database, tmp_path: Path, mode: str
) -> None:
    run = sweep_run(db, tmp_path, mode)
    assert run.load_previous() == [0, 1, 2]
    curves = {0: [0.5, 0.7], 1: [0.6, 0.4], 2: [0.2, 0.3]}
    for index, values in curves.items():
        run.trial_started(index)
        for epoch, value in enumerate(values, start=1):
            report(run, index, epoch, value)
    finish(run, 0, "SUCCEEDED")
    finish(run, 1, "STOPPED")  # ended early by the scheduler
    run.trial_ended(2, "RayTaskError: boom")
    outcome, result, error = run.outcome()

    pick = max if mode == "max" else min
    best = {index: pick(values) for index, values in curves.items()}
    winner = pick((0, 1), key=lambda i: best[i])  # a failed trial's values never make it the best
    assert outcome == "partially_failed" and result is not None
    assert error == "1 of 3 trials failed: trial 2: RayTaskError: boom"
    assert (result["best_trial"], result["best_metric"]) == (winner, best[winner])
    assert result["best_config"] == {"method.wrapper.hparams.rho": [0.01, 0.1, 0.2][winner]}
    assert result["trials"] == {"succeeded": 1, "stopped": 1, "failed": 1}
    with db.read() as session:
        rows = {t.trial_index: t for t in list_trials(session, run.lease.job_id)}
        history = metric_history(session, run.lease.job_id, names=["test/mean/accuracy"])
    assert {i: rows[i].best_metric for i in rows} == best
    assert [rows[i].state for i in range(3)] == ["succeeded", "stopped", "failed"]
    assert rows[2].result is not None and "boom" in rows[2].result["error"]
    assert [(p.trial_index, p.step, p.value) for p in history] == [
        (index, 10 * epoch, value) for index, values in curves.items() for epoch, value in enumerate(values, 1)
    ]


def test_a_sweep_is_succeeded_only_when_no_trial_failed_or_vanished(db: Database, tmp_path: Path) -> None:
    run = sweep_run(db, tmp_path, "max")
    run.load_previous()
    for index in range(3):
        run.trial_started(index)
        report(run, index, 1, 0.1 * (index + 1))
    finish(run, 0, "SUCCEEDED")
    finish(run, 1, "STOPPED")
    assert run.outcome()[0] == "partially_failed"  # trial 2 never ended: it vanished
    with db.read() as session:
        vanished = {t.trial_index: t for t in list_trials(session, run.lease.job_id)}[2]
    assert vanished.state == "failed" and "ended while the trial was running" in vanished.result["error"]

    clean = sweep_run(db, tmp_path / "clean", "max")
    clean.load_previous()
    for index in range(3):
        report(clean, index, 1, 0.5)
        finish(clean, index, "SUCCEEDED")
    assert clean.outcome()[:3:2] == ("succeeded", None)

    hopeless = sweep_run(db, tmp_path / "hopeless", "max")
    hopeless.load_previous()
    for index in range(3):
        hopeless.trial_ended(index, f"ValueError: trial {index}")
    state, result, error = hopeless.outcome()
    assert state == "failed" and result == {"trials": {"failed": 3}}
    assert error is not None and "trial 2: ValueError: trial 2" in error


def test_a_sweep_trials_telemetry_reaches_the_metrics_the_api_exports_for_it(db: Database, tmp_path: Path) -> None:
    run = sweep_run(db, tmp_path, "max")
    run.load_previous()
    run.trial_started(1)
    tasks = ["left", "right"]
    gram = [[4.0, -2.0], [-2.0, 9.0]]  # norms 2 and 3, cosine -1/3
    payload = {"tasks": tasks, "global_batch": 32, "losses": [0.7, 0.4], "gram": gram}
    run.trial_result(
        1,
        {
            "epoch": 1,
            "step": 10,
            "train/loss/left": 0.8,
            "train/loss/right": 0.5,
            "train/samples_per_s": 320.0,
            "test/mean/accuracy": 0.5,
            TELEMETRY_KEY: payload,
        },
    )
    names = [
        POINT_STEP_SECONDS,
        POINT_SAMPLES,
        "train/cosine/left/right",
        "train/grad_norm/right",
        POINT_CONFLICT_RATIO,
    ]
    with db.read() as session:
        stored = {
            p.name: (p.trial_index, p.step, p.value) for p in metric_history(session, run.lease.job_id, names=names)
        }
        snapshot = database_snapshot(session, now=utcnow(), lease_seconds=60)
    assert stored == {
        POINT_STEP_SECONDS: (1, 10, pytest.approx(32 / 320.0)),
        POINT_SAMPLES: (1, 10, 10 * 32),
        "train/cosine/left/right": (1, 10, pytest.approx(-1 / 3)),
        "train/grad_norm/right": (1, 10, pytest.approx(3.0)),
        POINT_CONFLICT_RATIO: (1, 10, 1.0),  # the one pair conflicts
    }
    [job] = snapshot.running_jobs
    [series] = job.series
    assert series.trial == 1 and series.latest["train/cosine/left/right"] == pytest.approx(-1 / 3)
    assert series.step_seconds.count == 1


def test_a_resumed_attempt_keeps_finished_trials_and_stores_replayed_epochs_once(db: Database, tmp_path: Path) -> None:
    run = sweep_run(db, tmp_path, "max")
    run.load_previous()
    run.trial_started(0)
    report(run, 0, 1, 0.5)
    finish(run, 0, "SUCCEEDED")
    run.trial_started(1)
    report(run, 1, 1, 0.6)  # then the worker dies

    again = JobRun(db, run.lease, run.plan, run.paths, run.log)
    assert again.load_previous() == [1, 2]
    report(again, 1, 1, 0.6)  # the resumed trial replays its history
    report(again, 1, 2, 0.8)
    with db.read() as session:
        history = metric_history(session, run.lease.job_id, names=["test/mean/accuracy"], trial_index=1)
    assert [(p.step, p.value) for p in history] == [(10, 0.6), (20, 0.8)]


def test_nothing_is_written_for_a_job_cancelled_under_the_worker(db: Database, tmp_path: Path) -> None:
    run = sweep_run(db, tmp_path, "max")
    run.load_previous()
    queue.cancel(db, run.lease.job_id, user="someone")
    report(run, 0, 1, 0.5)  # the fenced write is refused: the run learns why
    assert run.should_stop() and run.stop_reason == "cancelled"
    report(run, 0, 2, 0.9)
    with db.read() as session:
        assert metric_history(session, run.lease.job_id) == []
        assert get_job(session, run.lease.job_id).state == "cancelled"


class _Fit:
    """A stand-in TorchTrainer whose controller puts three reports on the queue and then fails or returns."""

    def __init__(self, reports: Any, error: Exception | None) -> None:
        self.reports, self.error = reports, error

    def fit(self) -> None:
        for epoch in (1, 2, 3):
            time.sleep(0.05)
            self.reports.put({"epoch": epoch})
        if self.error is not None:
            raise self.error


@pytest.mark.parametrize("error", [None, RuntimeError("rank 1 died")])
def test_every_train_report_reaches_the_trial_in_order_before_fits_outcome(error: Exception | None) -> None:
    from queue import Queue

    from flatmtl.workers.worker.trials import _fit_forwarding

    reports: Queue[dict[str, int]] = Queue(maxsize=1)
    seen: list[dict[str, int]] = []
    if error is None:
        _fit_forwarding(_Fit(reports, None), reports, seen.append)
    else:
        with pytest.raises(RuntimeError, match="rank 1 died"):
            _fit_forwarding(_Fit(reports, error), reports, seen.append)
    assert seen == [{"epoch": 1}, {"epoch": 2}, {"epoch": 3}]


UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/flatmtl"
"""A database that refuses every connection at once: an outage as the worker sees it."""


def test_the_keeper_stops_the_run_half_a_lease_after_its_last_heartbeat_when_the_database_is_down(
    db: Database,
) -> None:
    lease = claimed(db, TrainSpec.model_validate(BASE))
    down = Database(UNREACHABLE)
    began = time.monotonic()
    keeper, reasons, told = keep(down, lease, 1.0)
    assert told.wait(5.0) and reasons == ["unreachable"]
    assert 0.45 <= time.monotonic() - began < 1.0, "stopped after half the lease, before it expires"
    keeper.finish()
    down.dispose()


def test_a_worker_waits_out_a_database_that_is_down_and_stops_when_told(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=UNREACHABLE)
    worker = Worker(settings, RaySettings(address="ray://nowhere:1"), WorkerOptions(owner="tester"))
    stopper = threading.Timer(1.5, worker.shutdown)
    stopper.start()
    assert worker.run() == 0  # retried until shut down, never reaching Ray
    stopper.join()


def test_a_job_naming_a_path_outside_the_data_roots_fails_before_ray(db: Database, tmp_path: Path) -> None:
    lease = claimed(db, TrainSpec.model_validate({**BASE, "problem_options": {"data_dir": "/etc"}}))
    settings = Settings(data_dir=tmp_path, database_url=str(db.url), data_roots=[tmp_path / "datasets"])
    worker = Worker(settings, RaySettings(address="ray://nowhere:1"), WorkerOptions(owner="tester"))
    worker.run_job(lease)  # never reaches Ray: the address above would fail
    with db.read() as session:
        job = get_job(session, lease.job_id)
    assert job.state == "failed" and "spec.problem_options.data_dir = '/etc'" in job.error, job.error
    assert str(tmp_path / "datasets") in job.error
    worker.db.dispose()


def test_the_reaper_deletes_shipped_code_only_when_no_unfinished_job_names_it_and_it_went_unused(
    db: Database, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, database_url=str(db.url), code_retention_days=30)

    def stored(name: str, age_days: float) -> str:
        digest = code.store(settings.artifacts, code.pack(_code_dir(tmp_path / name), 2**20), 2**20)
        stamp = time.time() - age_days * 86400
        os.utime(code.archive_path(settings.artifacts, digest), (stamp, stamp))
        return digest

    queued, sweep_base, finished, fresh, forgotten = (
        stored(name, age) for name, age in [("queued", 40), ("sweep", 40), ("done", 40), ("fresh", 1), ("old", 40)]
    )
    shipped = {**BASE, "problem": "waves:Waves"}
    queue.submit(db, TrainSpec.model_validate({**shipped, "code": queued}))
    sweep = {"kind": "sweep", "base": {**shipped, "code": sweep_base}, "metric": "test/mean/accuracy", "mode": "max"}
    queue.submit(db, SweepSpec.model_validate({**sweep, "space": {"epochs": {"type": "grid", "values": [1, 2]}}}))
    done, _ = queue.submit(db, TrainSpec.model_validate({**shipped, "code": finished}))
    queue.cancel(db, done.id)

    worker = Worker(settings, RaySettings(address="ray://nowhere:1"), WorkerOptions(owner="tester"))
    worker.reap(force=True)
    kept = {digest for digest in (queued, sweep_base, finished, fresh, forgotten) if _archive_exists(settings, digest)}
    assert kept == {queued, sweep_base, fresh}
    with pytest.raises(code.CodeArchiveError, match="upload it again"):
        code.unpack(settings.artifacts, finished, tmp_path / "unpacked", 2**20)

    assert stored("done", 40) == finished and stored("fresh", 40) == fresh  # uploads long ago: not yet deleted
    code.store(settings.artifacts, code.pack(tmp_path / "fresh", 2**20), 2**20)  # uploaded again today
    worker.reap(force=True)
    worker.db.dispose()
    assert _archive_exists(settings, fresh) and not _archive_exists(settings, finished)


def _code_dir(path: Path) -> Path:
    (path / "waves").mkdir(parents=True, exist_ok=True)
    (path / "waves" / "problem.py").write_text(f"NAME = {path.name!r}\n")  # each directory its own digest
    return path


def _archive_exists(settings: Settings, digest: str) -> bool:
    return code.archive_path(settings.artifacts, digest).exists()
