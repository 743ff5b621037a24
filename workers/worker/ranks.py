"""One rank of a Ray Train run: the training package's ``Trainer`` inside the process group Ray Train set up.

``flatmtl.workers.training.local.train`` launches its own process group; under Ray Train the group exists already, so
each Ray Train worker builds a ``Trainer`` with a distributed ``RankContext`` directly. Epoch records reach
Ray Tune through ``ray.train.report``, which every rank must call the same number of times, while the
Trainer hands epoch records to rank 0 only. The Trainer polls its ``stop_event`` on every rank before every
step, and its ``history`` holds the same records on every rank, so :class:`EpochReporter` is that event:
each poll reports the epochs finished since the last one (and never asks to stop: stopping a run is the
driver's, by ending its trial). Rank 0 adds the last step's losses and Gram matrix for the telemetry.

Each rank trains in a run directory on its own node, never at a path of the worker's: rank 0's report of a
newly trained epoch carries that directory as a Ray Train checkpoint (the epoch-end checkpoint file with the
metrics, config and, after the last epoch, the summary and plots), which Ray persists to the run's storage.
A run restores from there on any node: every rank copies the restored checkpoint into its directory.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from flatmtl.workers.training import ConfigError, RunDirectory, TrainingFailedError, check_runnable
from flatmtl.workers.training.preparation import prepare_run
from flatmtl.workers.training.trainer import RankContext, Trainer
from flatmtl.workers.worker import lineage
from flatmtl.workers.worker.contracts import (
    FAILURE_KEY,
    PLACEMENT_GROUP_NAMESPACE,
    TELEMETRY_KEY,
    RankConfig,
)


def task_means(record: dict[str, Any]) -> dict[str, float]:
    """``<split>/mean/<metric>``: the mean over tasks of every ``<split>/<task>/<metric>`` that all tasks have,
    so a sweep can rank trials by e.g. ``test/mean/accuracy``. The tasks are those with a ``train/loss/<task>``."""
    tasks = {key.split("/")[2] for key in record if key.startswith("train/loss/") and key.count("/") == 2}
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for key, value in record.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[1] in tasks and isinstance(value, int | float) and not isinstance(value, bool):
            groups[(parts[0], parts[2])].append(float(value))
    return {
        f"{split}/mean/{metric}": math.fsum(values) / len(values)
        for (split, metric), values in groups.items()
        if len(values) == len(tasks)
    }


class _LastRecord:
    """The Trainer's MTL step, keeping the last step's losses and Gram matrix for telemetry."""

    def __init__(self, step: Any) -> None:
        self._step = step
        self.losses: list[float] | None = None
        self.gram: list[list[float]] | None = None

    def __call__(self, closure: Any) -> Any:
        record = self._step(closure)
        if record.losses is not None:
            self.losses = record.losses.detach().double().cpu().tolist()
        self.gram = None if record.gram is None else record.gram.detach().double().cpu().tolist()
        return record

    def __getattr__(self, name: str) -> Any:
        return getattr(self._step, name)


class EpochReporter:
    """The Trainer's ``stop_event``: reports finished epochs to Ray Train at every poll; never set.

    A restored run's epochs are reported again (``replay``) without a checkpoint; each epoch trained here
    carries rank 0's run directory as its checkpoint.
    """

    def __init__(self, trainer_rank: int, run: RunDirectory, *, replay: bool = True) -> None:
        self.leader = trainer_rank == 0
        self.run = run
        self.replay = replay
        self.trainer: Trainer | None = None
        self.recorder: _LastRecord | None = None
        self.reported = 0
        self.restored = 0
        self.checkpointed = False

    def attach(self, trainer: Trainer) -> None:
        """``replay``: report a resumed run's restored history too (a new Tune run needs whole curves; a PBT
        clone continuing inside the same Tune run does not)."""
        self.trainer = trainer
        self.restored = len(trainer.history)
        if not self.replay:
            self.reported = self.restored
        if self.leader:
            self.recorder = _LastRecord(trainer.step)
            trainer.step = self.recorder  # type: ignore[assignment]

    def is_set(self) -> bool:
        self.flush()
        return False

    def flush(self, extra: dict[str, Any] | None = None) -> None:
        assert self.trainer is not None
        history = self.trainer.history
        while self.reported < len(history):
            record = dict(history[self.reported])
            self.reported += 1
            metrics: dict[str, Any] = {**record, **task_means(record)}
            last = self.reported == len(history)
            if self.recorder is not None and last:
                metrics[TELEMETRY_KEY] = {
                    "tasks": list(self.trainer.tasks),
                    "global_batch": self.trainer.plan.global_batch,
                    "losses": self.recorder.losses,
                    "gram": self.recorder.gram,
                }
            if last and extra:
                metrics.update(extra)
                extra = None
            self.report(metrics, with_checkpoint=self.reported > self.restored)
        if extra:  # a failure before any new epoch: its FAILED summary still reaches storage
            self.report(extra, with_checkpoint=True)

    def finish(self) -> None:
        """Report what is left; a run that trained no epoch here (a clone of a finished trial, a restored run that
        had finished) still persists its final directory, summary included, once."""
        self.flush()
        if not self.checkpointed:
            self.report({"finished": 1}, with_checkpoint=True)

    def report(self, metrics: dict[str, Any], *, with_checkpoint: bool) -> None:
        import ray.train

        self.checkpointed = self.checkpointed or with_checkpoint
        if not (with_checkpoint and self.leader):
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="flatmtl-report-") as staging:
            snapshot(self.run, Path(staging) / "run")
            if "epoch" in metrics:
                name = f"epoch_{int(metrics['epoch']):04d}"
            else:  # the end of a run that trained no new epoch, or failed: after the epoch's own checkpoint
                name = f"end_{self.trainer.epoch if self.trainer else 0:04d}"
            try:
                ray.train.report(
                    metrics,
                    checkpoint=ray.train.Checkpoint.from_directory(str(Path(staging) / "run")),
                    checkpoint_dir_name=name,
                )
            except OSError as error:  # Ray's copy to storage names no file: the job's reason names where it failed
                raise OSError(error.errno, error.strerror or str(error), _checkpoint_destination(name)) from error


def _checkpoint_destination(name: str) -> str:
    """Where Ray persists the checkpoint ``name``; its storage context is a developer API, so without it the
    checkpoint's name stands in."""
    import ray.train

    try:
        return ray.train.get_context().get_storage().build_checkpoint_path_from_name(name)
    except (AttributeError, NotImplementedError):
        return name


def snapshot(run: RunDirectory, into: Path) -> None:
    """The run directory as a checkpoint: hard links (copies across filesystems) of its files, without the
    per-epoch checkpoint files and half-written temporaries."""
    for folder, _, files in os.walk(run.root):
        target = into / Path(folder).relative_to(run.root)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            if name.endswith(".tmp") or (Path(folder) == run.checkpoints and name != run.latest.name):
                continue
            try:
                os.link(Path(folder) / name, target / name)
            except OSError:
                shutil.copy2(Path(folder) / name, target / name)


def restore(run: RunDirectory, config: RankConfig) -> bool:
    """Fill this rank's run directory from Ray Train's restored checkpoint, else from the adopted one, and prepare
    it (``prepare_run``); True when there is a checkpoint to resume from."""
    import ray.train

    restored = ray.train.get_checkpoint()
    source = restored if restored is not None else config.adopt
    run.create()
    if source is not None:
        with source.as_directory() as directory:
            shutil.copytree(directory, run.root, dirs_exist_ok=True)
        if restored is None:
            lineage.relabel(run, config.spec, list(config.mutable))
        elif config.discard_other_spec and _trained_other_spec(run, config):
            shutil.rmtree(run.root)
    return prepare_run(run, config.spec, config.options, resume=True)


def _trained_other_spec(run: RunDirectory, config: RankConfig) -> bool:
    return run.config.exists() and run.read_json(run.config) != config.spec.model_dump(mode="json")


def rank_main(config: RankConfig) -> None:
    """Ray Train's per-worker function: train ``config.spec`` as this rank, in a run directory on this node."""
    import ray.train
    import ray.train.torch
    from ray.experimental import internal_kv
    from ray.util import get_current_placement_group

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    group = get_current_placement_group()
    if rank == 0 and group is not None:  # so the driver can release it if Tune ends the trial early
        internal_kv._internal_kv_put(
            config.placement_group_key, group.id.hex(), overwrite=True, namespace=PLACEMENT_GROUP_NAMESPACE
        )
    options = config.options
    torch.set_num_threads(options.threads or 1)
    device = ray.train.torch.get_device() if options.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":  # NCCL's object collectives (checkpoints) run on the current device
        torch.cuda.set_device(device)
    if config.spec.code is not None:  # shipped code is first imported here, from Ray's working directory
        try:
            check_runnable(config.spec)
        except ConfigError as error:  # reported, not raised: a restart would fail the same way
            ray.train.report({FAILURE_KEY: {"type": "ConfigError", "message": str(error), "step": 0, "epoch": 0}})
            return
    with tempfile.TemporaryDirectory(prefix=f"flatmtl-rank{rank}-") as scratch:
        run = RunDirectory(Path(scratch) / "run")
        resume = restore(run, config)
        reporter = EpochReporter(rank, run, replay=config.replay)
        rank_context = RankContext(rank, world_size, device, distributed=True, stop_event=reporter)
        trainer = Trainer(config.spec, run, options, rank_context, resume=resume)
        reporter.attach(trainer)
        try:
            trainer.run()
        except TrainingFailedError as failure:
            # Reported, not raised: Ray Train would restart the worker group for a failure that would recur.
            reporter.flush({FAILURE_KEY: failure.details()})
            return
        reporter.finish()
