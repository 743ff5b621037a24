"""The callbacks and stopper between a running sweep and the worker's sink, and between a trial's Ray Train run and
its Tune trial (Ray imported here only)."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune
from ray.train.v2.api.callback import UserCallback

from flatmtl.workers.worker.contracts import CHECKPOINT_KEY, TrialSink
from flatmtl.workers.worker.failures import summarise_traceback
from flatmtl.workers.worker.search import trial_index


class _SinkHolder:
    """Tune pickles its callbacks and stopper into its experiment state; the sink (a database, locks) stays out
    of that copy, which is never run: this process keeps the live objects."""

    def __init__(self, sink: TrialSink) -> None:
        self.sink = sink

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.sink = None  # type: ignore[assignment]


class Bridge(_SinkHolder, tune.Callback):
    """Tune's trial events, in the driver, to the sink; an ended trial's leftover Ray resources released."""

    def __init__(self, sink: TrialSink, release: Callable[[int], None]) -> None:
        super().__init__(sink)
        self.release = release

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.sink = None  # type: ignore[assignment]
        self.release = lambda index: None

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.sink.trial_started(trial_index(str(trial)))

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any) -> None:
        self.sink.trial_result(trial_index(str(trial)), {**result, "config": dict(trial.config)})

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A trial whose function returned (``done``), or one its scheduler ended early."""
        index = trial_index(str(trial))
        self.release(index)
        self.sink.trial_ended(index, None, finished=bool((trial.last_result or {}).get("done")))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        index = trial_index(str(trial))
        self.release(index)
        self.sink.trial_ended(index, trial_error(trial))


def trial_error(trial: Any) -> str:
    """What failed in a trial, for the job's error: Tune's error.txt (its traceback, which is there before the
    pickled exception can be read back) summarised, else the exception itself."""
    path = trial.error_file
    text = Path(path).read_text(errors="replace") if path and Path(path).is_file() else ""
    if not text.strip():
        try:
            error = trial.get_error()
        except Exception:  # Tune could not write it whole (a full disk, say)
            error = None
        text = "".join(traceback.format_exception(error)) if error is not None else ""
    if not text.strip():
        return f"trial {trial} failed without an error report; see the job's log"
    return summarise_traceback(text)


class StopWhenAsked(_SinkHolder, tune.Stopper):
    """Ends every trial once the sink asks (a cancellation, a lost lease, a worker shutting down)."""

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.sink.should_stop()


class ForwardReports(UserCallback):
    """Ray Train's epoch reports (rank 0's), from the Train controller to the trial function through a Ray queue,
    where the trial reports them to Tune itself, each with the storage path of its persisted checkpoint.

    The controller outlives a restarted worker group, whose ranks report the restored epochs again: those are
    forwarded once.
    """

    def __init__(self, reports: Any) -> None:
        self.reports = reports
        self.forwarded = 0

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        record = dict(metrics[0])
        epoch = record.get("epoch")
        if isinstance(epoch, int):
            if epoch <= self.forwarded:
                return
            self.forwarded = epoch
        if checkpoint is not None:
            record[CHECKPOINT_KEY] = checkpoint.path
        self.reports.put(record)
