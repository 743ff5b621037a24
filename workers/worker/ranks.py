"""One rank of a Ray Train run: the training package's ``Trainer`` inside the process group Ray Train set up.

``flatmtl.workers.training.local.train`` launches its own process group; under Ray Train the group exists already, so
each Ray Train worker builds a ``Trainer`` with a distributed ``RankContext`` directly. Epoch records reach
Ray Tune through ``ray.train.report``, which every rank must call the same number of times, while the
Trainer hands epoch records to rank 0 only. The Trainer polls its ``stop_event`` on every rank before every
step, and its ``history`` holds the same records on every rank, so :class:`EpochReporter` is that event:
each poll reports the epochs finished since the last one (and never asks to stop: stopping a run is the
driver's, by ending its trial). Rank 0 adds the last step's losses and Gram matrix for the telemetry.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import torch

from flatmtl.workers.training import RunDirectory, TrainingFailedError
from flatmtl.workers.training.trainer import RankContext, Trainer
from flatmtl.workers.worker.contracts import PLACEMENT_GROUP_FILE, TELEMETRY_KEY, RankConfig


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
    """The Trainer's ``stop_event``: reports finished epochs to Ray Train at every poll; never set."""

    def __init__(self, trainer_rank: int, *, replay: bool = True) -> None:
        self.leader = trainer_rank == 0
        self.replay = replay
        self.trainer: Trainer | None = None
        self.recorder: _LastRecord | None = None
        self.reported = 0

    def attach(self, trainer: Trainer) -> None:
        """``replay``: report a resumed run's restored history too (a new Tune run needs whole curves; a PBT
        clone continuing inside the same Tune run does not)."""
        self.trainer = trainer
        if not self.replay:
            self.reported = len(trainer.history)
        if self.leader:
            self.recorder = _LastRecord(trainer.step)
            trainer.step = self.recorder  # type: ignore[assignment]

    def is_set(self) -> bool:
        self.flush()
        return False

    def flush(self) -> None:
        import ray.train

        assert self.trainer is not None
        history = self.trainer.history
        while self.reported < len(history):
            record = dict(history[self.reported])
            self.reported += 1
            metrics: dict[str, Any] = {**record, **task_means(record)}
            if self.recorder is not None and self.reported == len(history):
                metrics[TELEMETRY_KEY] = {
                    "tasks": list(self.trainer.tasks),
                    "global_batch": self.trainer.plan.global_batch,
                    "losses": self.recorder.losses,
                    "gram": self.recorder.gram,
                }
            ray.train.report(metrics)


def rank_main(config: RankConfig) -> None:
    """Ray Train's per-worker function: train ``config.spec`` into ``config.run_dir`` as this rank."""
    import ray.train
    import ray.train.torch
    from ray.util import get_current_placement_group

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    group = get_current_placement_group()
    if rank == 0 and group is not None:  # so the driver can release it if Tune ends the trial early
        (config.run_dir / PLACEMENT_GROUP_FILE).write_text(group.id.hex())
    options = config.options
    torch.set_num_threads(options.threads or 1)
    device = ray.train.torch.get_device() if options.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":  # NCCL's object collectives (checkpoints) run on the current device
        torch.cuda.set_device(device)
    reporter = EpochReporter(rank, replay=config.replay)
    rank_context = RankContext(rank, world_size, device, distributed=True, stop_event=reporter)
    trainer = Trainer(config.spec, RunDirectory(config.run_dir), options, rank_context, resume=config.resume)
    reporter.attach(trainer)
    try:
        trainer.run()
    except TrainingFailedError as failure:
        raise RuntimeError(f"training failed: {failure}") from failure
    reporter.flush()
