"""``train(spec, run_dir)``: the Python entry point the CLI and the control plane's worker call.

One process without sharding trains in the calling process. Otherwise ``flatmtl.workers.engine.launch`` starts a
local process group (NCCL with a GPU per rank on CUDA, gloo on the CPU); the caller's thread keeps serving the
callbacks: it forwards ``should_stop`` to the ranks through a shared event and hands rank 0's epoch
reports to ``on_epoch``. A rank that fails to take a step reports why, so the caller gets the same
exception type (``NonFiniteLossError``...) as in a local run, and the ranks agree on every stop, so none
waits on a collective that will never come.
"""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flatmtl.service.specs.train import TrainSpec
from flatmtl.workers.training.config import RunOptions, check_runnable, parse_spec
from flatmtl.workers.training.errors import ConfigError, ConfigProblem, NonFiniteLossError, TrainingFailedError
from flatmtl.workers.training.preparation import prepare_run
from flatmtl.workers.training.rundir import RunDirectory
from flatmtl.workers.training.trainer import EpochCallback, RankContext, StopCallback, Trainer

POLL_SECONDS = 0.1
COLLECTIVE_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class RunResult:
    """A run that ended without failing: ``status`` is SUCCEEDED or STOPPED (``summary.json``'s content)."""

    status: str
    run_dir: Path
    summary: dict[str, Any]


def train(
    spec: TrainSpec | dict[str, Any],
    run_dir: Path | str,
    *,
    resume: bool = False,
    options: RunOptions | None = None,
    should_stop: StopCallback | None = None,
    on_epoch: EpochCallback | None = None,
) -> RunResult:
    """Train ``spec`` into ``run_dir``.

    ``resume=True`` continues from ``run_dir/checkpoints/latest.pt`` when there is one (else starts fresh, as
    after a crash before the first checkpoint); the spec and dtype must match the checkpoint's. Without
    ``resume`` an existing run there is refused rather than overwritten. ``should_stop`` is polled between
    steps; ``on_epoch`` gets each epoch's record. Raises ``ConfigError`` for a config that cannot run (GPUs
    asked for where CUDA is not available included) and ``TrainingFailedError``/``NonFiniteLossError`` after
    writing a FAILED summary.
    """
    if not isinstance(spec, TrainSpec):
        spec = parse_spec(spec)
    options = options or RunOptions()
    _check_gpus(spec)
    check_runnable(spec)
    device = resolve_device(options.device, spec.processes, torch.cuda.device_count())
    run = RunDirectory(Path(run_dir))
    resuming = prepare_run(run, spec, options, resume=resume)
    if spec.processes == 1 and spec.sharding == "none":
        if options.threads is not None:
            torch.set_num_threads(options.threads)
        context = RankContext(device=device)
        trainer = Trainer(spec, run, options, context, resume=resuming, should_stop=should_stop, on_epoch=on_epoch)
        summary = trainer.run()
        return RunResult(summary["status"], run.root, summary)
    return _train_distributed(spec, run, options, device, resuming, should_stop, on_epoch)


def _check_gpus(spec: TrainSpec) -> None:
    """A spec that asks for GPUs fails here, before the run directory or any rank exists, where there are none
    (on a Ray cluster such a request fails at claim time; this is the same refusal for local runs)."""
    if spec.resources.gpus > 0 and not torch.cuda.is_available():
        raise ConfigError(
            [ConfigProblem("resources.gpus", spec.resources.gpus, "asks for GPUs but no CUDA device is available", "0")]
        )


def resolve_device(requested: str, processes: int, visible_gpus: int) -> torch.device:
    """Where the ranks train: ``cuda`` needs a GPU for each of the ``processes`` ranks (NCCL puts no two ranks
    on one GPU) and is refused otherwise, never quietly run on the CPU; ``auto`` takes CUDA when every rank gets
    its own GPU, else the CPU."""
    if requested == "cuda" and visible_gpus < processes:
        reason = (
            "no CUDA device is available"
            if visible_gpus == 0
            else f"{processes} processes need a GPU each, {visible_gpus} visible"
        )
        allowed = "auto, cpu" if visible_gpus == 0 else f"auto, cpu, or processes <= {visible_gpus}"
        raise ConfigError([ConfigProblem("options.device", "cuda", reason, allowed)])
    if requested == "auto":
        return torch.device("cuda" if 0 < processes <= visible_gpus else "cpu")
    return torch.device(requested)


def _train_distributed(
    spec: TrainSpec,
    run: RunDirectory,
    options: RunOptions,
    device: torch.device,
    resume: bool,
    should_stop: StopCallback | None,
    on_epoch: EpochCallback | None,
) -> RunResult:
    import torch.multiprocessing as mp

    from flatmtl.workers.engine import launch

    context = mp.get_context("spawn")
    stop_event = context.Event()
    reports = context.Queue()
    failure: list[BaseException] = []

    def target() -> None:
        try:
            launch(
                _rank_main,
                spec.processes,
                spec,
                str(run.root),
                options.as_dict(),
                resume,
                stop_event,
                reports,
                backend="nccl" if device.type == "cuda" else "gloo",
                timeout_s=COLLECTIVE_TIMEOUT_S,
                threads_per_rank=options.threads or max(1, (os.cpu_count() or 1) // spec.processes),
            )
        except BaseException as error:  # re-raised in the caller's thread below
            failure.append(error)

    thread = threading.Thread(target=target, name="flatmtl-ranks", daemon=True)
    thread.start()
    outcome: dict[str, Any] | None = None
    try:
        while thread.is_alive() or not reports.empty():
            if should_stop is not None and not stop_event.is_set() and should_stop():
                stop_event.set()
            try:
                kind, payload = reports.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            if kind == "epoch" and on_epoch is not None:
                on_epoch(payload)
            elif kind in ("result", "failed"):
                outcome = {"kind": kind, **payload}
    except BaseException:
        stop_event.set()  # a failing callback stops the ranks at their next step, with a checkpoint
        thread.join()
        raise
    thread.join()
    if outcome is not None and outcome["kind"] == "failed":
        raise _rebuild_failure(outcome["error"])
    if failure:
        raise failure[0]
    if outcome is None:
        raise RuntimeError("the ranks ended without reporting a result")
    return RunResult(outcome["summary"]["status"], run.root, outcome["summary"])


def _rebuild_failure(details: dict[str, Any]) -> TrainingFailedError:
    if details["type"] == NonFiniteLossError.__name__:
        return NonFiniteLossError(
            step=details["step"],
            epoch=details["epoch"],
            tasks=details["tasks"],
            values=[float(v) for v in details["values"]],
        )
    return TrainingFailedError(details["message"], step=details["step"], epoch=details["epoch"])


def _rank_main(
    rank: int,
    world_size: int,
    spec: TrainSpec,
    run_root: str,
    options_document: dict[str, Any],
    resume: bool,
    stop_event: Any,
    reports: Any,
) -> None:
    """One rank of a launched group (module level so spawn can import it). The spec arrives validated (pickled),
    so ranks never re-validate against a catalog that could differ from the caller's."""
    import torch.distributed as dist

    options = RunOptions(**options_document)
    device = torch.device("cuda", rank) if dist.get_backend() == "nccl" else torch.device("cpu")
    context = RankContext(rank, world_size, device, distributed=True, stop_event=stop_event)
    leader = rank == 0
    trainer = Trainer(
        spec,
        RunDirectory(Path(run_root)),
        options,
        context,
        resume=resume,
        on_epoch=(lambda record: reports.put(("epoch", record))) if leader else None,
    )
    try:
        summary = trainer.run()
    except TrainingFailedError as failure:
        if leader:
            reports.put(("failed", {"error": failure.details()}))
        return
    if leader:
        reports.put(("result", {"summary": summary}))
