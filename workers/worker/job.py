"""One claimed job while this worker runs it: the trials' events to the database, fenced by the lease.

A :class:`JobRun` is the runner's sink. It stores each epoch report as metric points, collects the trial's
run directory from the job's storage (``flatmtl.workers.worker.storage``) into the job's artifact directory,
where the API serves it, and keeps each sweep trial's row (config, state, best value of the sweep's metric)
current; when Tune is done it decides the outcome. Reports of epochs already stored by an earlier attempt (a
resumed trial replays its history so the scheduler sees whole curves) are not stored twice. A lease that is
lost, or a job cancelled, stops the run; the outcome of such a run is never written, since the job is no
longer this worker's.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from flatmtl.service import queue
from flatmtl.service.db import Database
from flatmtl.service.errors import LeaseLostError
from flatmtl.service.models import Job, Metric, Trial
from flatmtl.service.retry import GaveUpError, is_transient, retrying
from flatmtl.workers.training import RunDirectory, checkpoint
from flatmtl.workers.training.rundir import STATUS_SUCCEEDED
from flatmtl.workers.worker import storage
from flatmtl.workers.worker.contracts import CHECKPOINT_KEY, TrialPlan
from flatmtl.workers.worker.plan import JobPaths, JobPlan
from flatmtl.workers.worker.points import epoch_record, result_points

FINAL_TRIAL_STATES = ("succeeded", "stopped", "failed")
UNFENCED = ("cancelled", "lost", "unreachable")
"""Stop reasons after which the run writes nothing more: the job is not (or may soon not be) this worker's."""
MAX_ERROR_CHARS = 2000


@dataclass
class TrialState:
    """``config``: the trial's point of the search space; Optuna chooses it, and PBT changes it, while it runs."""

    plan: TrialPlan
    config: dict[str, Any] = field(default_factory=dict)
    state: str = "pending"
    best: float | None = None
    epochs: int = 0
    last: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def _shorten(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


class JobRun:
    def __init__(
        self,
        db: Database,
        lease: queue.Lease,
        plan: JobPlan,
        paths: JobPaths,
        log: logging.Logger,
        job_storage: storage.JobStorage | None = None,
    ) -> None:
        self.db, self.lease, self.plan, self.paths, self.log = db, lease, plan, paths, log
        self.storage = job_storage or storage.JobStorage(str(paths.ray))
        self.trials = {trial.index: TrialState(trial, dict(trial.config)) for trial in plan.trials}
        self.stop_reason: str | None = None
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self.stored_steps: dict[int | None, int] = {}

    # ---- before Tune ------------------------------------------------------------------------------------
    def load_previous(self) -> list[int]:
        """Pick up what earlier attempts stored; the indices of the trials still to run."""
        with self.db.read() as session:
            rows = session.execute(
                select(Metric.trial_index, func.max(Metric.step))
                .where(Metric.job_id == self.lease.job_id)
                .group_by(Metric.trial_index)
            ).all()
            self.stored_steps = {index: int(step) for index, step in rows}
            stored = {t.trial_index: t for t in session.scalars(select(Trial).where(Trial.job_id == self.lease.job_id))}
        todo = []
        for index, trial in self.trials.items():
            row = stored.get(index)
            if row is not None:
                trial.state, trial.best = row.state, row.best_metric
                trial.config = dict(row.config or trial.config)
            if self.plan.kind == "train" or trial.state not in FINAL_TRIAL_STATES:
                todo.append(index)
                self._log_checkpoint(trial.plan)
            if self.plan.kind == "sweep" and row is None:
                self._write_trial(trial)
        return todo

    def _log_checkpoint(self, trial: TrialPlan) -> None:
        run = RunDirectory(trial.run_dir)
        if run.latest.exists():
            position = checkpoint.load(run.latest)["position"]
            self.log.info(
                "trial %d resumes from its checkpoint at epoch %d, batch %d (step %d)",
                trial.index,
                position["epoch"],
                position["batch"],
                position["step"],
            )

    # ---- the runner's sink -------------------------------------------------------------------------------
    def should_stop(self) -> bool:
        return self._stopped.is_set()

    def stop(self, reason: str) -> None:
        """Ask the running trials to end (``cancelled``, ``lost``, ``unreachable`` or ``shutdown``); the first reason
        sticks."""
        with self._lock:
            if self.stop_reason is None:
                self.stop_reason = reason
                self.log.info("stopping the run: %s", reason)
        self._stopped.set()

    def _fenced(self, write: Any, *args: Any, **kwargs: Any) -> None:
        """One write of the run, retried while the database is unreachable until the run is stopped (the keeper
        stops it before the lease can expire; the next attempt then replays what was not stored)."""
        if self.should_stop() and self.stop_reason in UNFENCED:
            return
        try:
            retrying(
                lambda: write(self.db, self.lease, *args, **kwargs),
                what=f"job {self.lease.job_id}: {getattr(write, '__name__', 'write')}",
                log=self.log,
                give_up=self.should_stop,
                sleep=self._stopped.wait,
            )
        except LeaseLostError:
            self.stop(self._why_lost())
        except GaveUpError as error:
            self.log.warning("%s", error)

    def _why_lost(self) -> str:
        """``cancelled`` when a user cancelled the job, else ``lost`` (requeued by a reaper, or gone)."""
        try:
            with self.db.read() as session:
                state = session.scalar(select(Job.state).where(Job.id == self.lease.job_id))
        except Exception as error:
            if not is_transient(error):
                raise
            return "lost"
        return "cancelled" if state == "cancelled" else "lost"

    def _write_trial(self, trial: TrialState) -> None:
        if self.plan.kind != "sweep":
            return
        result = {"run_dir": self.relative(trial.plan.run_dir), "epochs": trial.epochs, "last": trial.last}
        if trial.error:
            result["error"] = trial.error
        self._fenced(
            queue.record_trial,
            trial.plan.index,
            config=trial.config,
            state=trial.state,
            best_metric=trial.best,
            result=result,
        )

    def trial_started(self, index: int) -> None:
        trial = self.trials[index]
        trial.state = "running"
        self.log.info(
            "trial %d started: %s", index, trial.config or ("training run" if self.plan.kind == "train" else "")
        )
        self._write_trial(trial)

    def trial_result(self, index: int, result: dict[str, Any]) -> None:
        trial = self.trials[index]
        tune_config = result.get("config")
        if self.plan.sweep is not None and isinstance(tune_config, dict):
            trial.config.update({path: tune_config[path] for path in self.plan.sweep.space if path in tune_config})
        trial.epochs = int(result.get("epoch", trial.epochs + 1))
        trial.last = {k: v for k, v in epoch_record(result).items() if math.isfinite(v)}
        sweep = self.plan.sweep
        if sweep is not None:
            value = result.get(sweep.metric)
            if isinstance(value, int | float) and math.isfinite(value):
                better = max if sweep.mode == "max" else min
                trial.best = float(value) if trial.best is None else better(trial.best, float(value))
        checkpoint_path = result.get(CHECKPOINT_KEY)
        if isinstance(checkpoint_path, str):
            self._collect(trial.plan, checkpoint_path)
        step, points = result_points(result)
        key = None if self.plan.kind == "train" else index
        if step > self.stored_steps.get(key, 0):
            self._fenced(queue.record_metrics, points, trial_index=key)
            self.stored_steps[key] = step
        shown = ", ".join(f"{k}={v:.4g}" for k, v in trial.last.items() if k in self._shown_metrics())
        self.log.info("trial %d epoch %d/%d (step %d): %s", index, trial.epochs, trial.plan.spec.epochs, step, shown)
        self._write_trial(trial)

    def _shown_metrics(self) -> tuple[str, ...]:
        sweep_metric = (self.plan.sweep.metric,) if self.plan.sweep else ()
        return ("train/loss", "test/mean/accuracy", "delta_m", *sweep_metric)

    def _collect(self, trial: TrialPlan, checkpoint_path: str) -> bool:
        """Copy a checkpoint of the trial's run from storage into its run directory; False when it cannot be read."""
        try:
            filesystem, _ = self.storage.resolve()
            storage.collect(filesystem, checkpoint_path, trial.run_dir)
        except OSError as error:
            self.log.warning("trial %d: cannot collect %s from storage: %s", trial.index, checkpoint_path, error)
            return False
        return True

    def _collect_latest(self, trial: TrialPlan) -> str | None:
        """Collect the trial's newest checkpoint; why it could not be, or None."""
        where = f"{self.storage.uri} ({storage.latest_file(trial.index)})"
        try:
            latest = storage.read_latest(self.storage, trial.index)
        except OSError as error:
            return f"its storage cannot be read: {error}"
        if latest is None or latest.checkpoint is None:
            return f"no checkpoint of it was recorded in {where}"
        if not self._collect(trial, latest.checkpoint):
            return f"its checkpoint {latest.checkpoint} cannot be read from storage"
        return None

    def trial_ended(self, index: int, error: str | None, *, finished: bool = False) -> None:
        """``finished``: the trial's function returned, so a SUCCEEDED summary must be in its last checkpoint;
        one that is not there fails the trial with the reason. A trial Tune ended early is ``stopped``."""
        trial = self.trials[index]
        missing = self._collect_latest(trial.plan)
        run = RunDirectory(trial.plan.run_dir)
        summary = run.read_json(run.summary) if run.summary.exists() else {}
        if summary.get("error"):
            trial.state, trial.error = "failed", _shorten(str(summary["error"].get("message", summary["error"])))
        elif error is not None:
            trial.state, trial.error = "failed", _shorten(error)
        elif summary.get("status") == STATUS_SUCCEEDED:
            trial.state = "succeeded"
        elif finished:
            why = missing or "its last checkpoint holds no SUCCEEDED summary"
            trial.state, trial.error = "failed", _shorten(f"the trial ended but its result was not found: {why}")
        else:
            trial.state = "stopped"  # ended early by the scheduler, or by a stop request
        self.log.info("trial %d %s%s", index, trial.state, f": {trial.error}" if trial.error else "")
        self._write_trial(trial)

    def all_ended(self) -> bool:
        """Whether every trial has reached a final state (its outcome is known)."""
        return all(trial.state in FINAL_TRIAL_STATES for trial in self.trials.values())

    # ---- progress and outcome ----------------------------------------------------------------------------
    def progress(self) -> float:
        """Share of the job's epochs done (a finished trial counts whole, even if stopped early)."""
        done = 0.0
        for trial in self.trials.values():
            if trial.state in FINAL_TRIAL_STATES:
                done += 1.0
            else:
                done += min(trial.epochs / trial.plan.spec.epochs, 1.0)
        return done / len(self.trials)

    def relative(self, path: Path) -> str:
        return path.relative_to(self.paths.root).as_posix()

    def outcome(self) -> tuple[queue.Outcome, dict[str, Any] | None, str | None]:
        """``(state, result, error)`` once every trial has ended; the state is one of ``queue.Outcome``."""
        if self.plan.kind == "train":
            return self._train_outcome(self.trials[0])
        return self._sweep_outcome()

    def _train_outcome(self, trial: TrialState) -> tuple[queue.Outcome, dict[str, Any] | None, str | None]:
        run = RunDirectory(trial.plan.run_dir)
        if trial.state != "succeeded":
            return "failed", None, trial.error or f"the training run ended {trial.state} without finishing"
        summary = run.read_json(run.summary)
        result = {
            "run_dir": self.relative(run.root),
            "summary": self.relative(run.summary),
            "plots": sorted(self.relative(p) for p in run.plots.glob("*.png")),
            "final": summary.get("final", {}),
            "delta_m": summary.get("delta_m"),
            "steps": summary.get("steps"),
        }
        return "succeeded", result, None

    def _sweep_outcome(self) -> tuple[queue.Outcome, dict[str, Any] | None, str | None]:
        """``succeeded`` when every trial succeeded or was ended early by the scheduler; ``partially_failed`` when
        some failed (a trial Tune never ended counts as failed) but others reported the metric; else ``failed``."""
        sweep = self.plan.sweep
        assert sweep is not None
        for trial in self.trials.values():
            if trial.state not in FINAL_TRIAL_STATES:
                trial.state, trial.error = "failed", f"the sweep ended while the trial was {trial.state}"
                self._write_trial(trial)
        counts: dict[str, int] = {}
        for trial in self.trials.values():
            counts[trial.state] = counts.get(trial.state, 0) + 1
        failed = [t for t in self.trials.values() if t.state == "failed"]
        failures = "; ".join(f"trial {t.plan.index}: {t.error}" for t in failed)
        scored = [t for t in self.trials.values() if t.best is not None and t.state != "failed"]
        if not scored:
            reason = f"no trial reported the metric {sweep.metric!r}"
            return "failed", {"trials": counts}, _shorten(reason + (f"; {failures}" if failed else ""))
        pick = max if sweep.mode == "max" else min
        best = pick(scored, key=lambda t: t.best if t.best is not None else math.nan)
        run = RunDirectory(best.plan.run_dir)
        result = {
            "metric": sweep.metric,
            "mode": sweep.mode,
            "best_trial": best.plan.index,
            "best_config": best.config,
            "best_metric": best.best,
            "best_run_dir": self.relative(run.root),
            "best_summary": self.relative(run.summary) if run.summary.exists() else None,
            "best_plots": sorted(self.relative(p) for p in run.plots.glob("*.png")),
            "trials": counts,
        }
        if failed:
            error = f"{len(failed)} of {len(self.trials)} trials failed: {failures}"
            return "partially_failed", result, _shorten(error)
        return "succeeded", result, None
