"""One rank's training loop: build from a TrainSpec, resume from a checkpoint, run epochs, record everything.

Where the pieces of a training step live: the update of one batch is the MTL core's step
(``flatmtl.workers.mtl.step.MTLStep``: weighting x aggregator x wrapper); how that step is distributed over
ranks, and which optimizer owns which partition, is the sharding mode the engine builds from the spec's
``sharding`` and ``sharding_backend`` (``flatmtl.workers.engine.sharding_modes``); this loop feeds it batches,
schedules the learning rate, evaluates, checkpoints and records, the same for every mode.

``precision="bf16"`` runs every forward pass and loss (training, SAM's perturbed passes, evaluation) under
bfloat16 autocast on the run's device; weights, gradients, the Gram matrix and the optimizer stay in ``dtype``
(DeepSpeed's master weights and optimizer state are float32 whatever ``dtype`` is).

Steps are counted from 1 across epochs. Between steps the loop checks the stop request (``should_stop``
locally, a shared event across ranks, agreed on with one tiny all-reduce so every rank stops at the same
step) and ``max_steps``; stopping saves ``latest`` so ``resume`` continues exactly where it left off.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from pydantic_core import to_jsonable_python
from torch import Tensor
from tqdm import tqdm

from flatmtl.service.specs.train import TrainSpec
from flatmtl.workers import problems
from flatmtl.workers.engine.sharding_modes import build_sharding_mode
from flatmtl.workers.mtl.base import map_tensors
from flatmtl.workers.mtl.errors import MethodError, NonFiniteLossesError
from flatmtl.workers.mtl.oracle import StepRecord
from flatmtl.workers.mtl.step import MTLStep, state_on_device
from flatmtl.workers.problems import delta_m
from flatmtl.workers.training import checkpoint, determinism, plots
from flatmtl.workers.training.config import RunOptions, model_name, split_references
from flatmtl.workers.training.data import BatchPlan, model_input, prefetch, resolve_workers
from flatmtl.workers.training.errors import ConfigError, ConfigProblem, NonFiniteLossError, TrainingFailedError
from flatmtl.workers.training.evaluation import evaluate
from flatmtl.workers.training.optim import build_scheduler, optimizer_options
from flatmtl.workers.training.records import EpochAccumulator, step_metrics
from flatmtl.workers.training.rundir import STATUS_FAILED, STATUS_STOPPED, STATUS_SUCCEEDED, RunDirectory

EpochCallback = Callable[[dict[str, Any]], None]
StopCallback = Callable[[], bool]


@dataclass
class RankContext:
    """Where this rank runs. ``stop_event`` is a multiprocessing event shared by all ranks (None locally)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    distributed: bool = False
    stop_event: Any = None

    @property
    def leader(self) -> bool:
        return self.rank == 0


def _to_cpu(value: Any) -> Any:
    return map_tensors(lambda tensor: tensor.detach().cpu(), value)


class Trainer:
    def __init__(
        self,
        spec: TrainSpec,
        run: RunDirectory,
        options: RunOptions,
        context: RankContext,
        *,
        resume: bool = False,
        should_stop: StopCallback | None = None,
        on_epoch: EpochCallback | None = None,
    ) -> None:
        self.spec = spec
        self.rundir = run
        self.options = options
        self.ctx = context
        self.should_stop = should_stop
        self.on_epoch = on_epoch
        self.dtype = getattr(torch, options.dtype)
        self.started = time.perf_counter()

        determinism.configure(spec.deterministic)
        checkpoint.seed_everything(spec.seed)
        problem_options, self.references = split_references(spec)
        self.problem = problems.build(spec.problem, **problem_options)
        saved = checkpoint.load(run.latest) if resume else None
        if saved is not None:
            self.problem.load_state_dict(saved.get("problem", {}))
        self.tasks = self.problem.task_names
        self.model = self.problem.model(model_name(spec), **spec.model_options).to(context.device, self.dtype)
        self.train_data = self.problem.dataset("train")
        self.plan = BatchPlan(
            len(self.train_data),  # type: ignore[arg-type]
            spec.batch_size,
            world_size=context.world_size,
            rank=context.rank,
            seed=spec.seed,
        )
        self.loader_workers = resolve_workers(spec.loader_workers, self.train_data, context.device, options.threads)
        if saved is not None:
            self._check_compatible(saved)
            self.model.load_state_dict(saved["model"])
        method = spec.method
        self.mode = build_sharding_mode(
            self.model,
            distributed=context.distributed,
            sharding=spec.sharding,
            backend=spec.sharding_backend,
            method={
                "weighting": method.weighting.name,
                "aggregator": method.aggregator.name,
                "wrapper": method.wrapper.name,
                "weighting_hparams": method.weighting.hparams,
                "aggregator_hparams": method.aggregator.hparams,
                "wrapper_hparams": method.wrapper.hparams,
                "seed": spec.seed,
                "diagnostics_every": spec.diagnostics_every,
            },
            optimizer=optimizer_options(spec.optimizer),
            prepare_step=lambda step: self._load_method_state(step, saved),
        )
        self.step: MTLStep = self.mode.step
        # The closure below checks its losses with data-dependent control flow and autocasts inside, neither of
        # which vmap batches faithfully: SAMO probes one forward per point here (flatmtl.workers.mtl.probes).
        self.step.probes = None
        self.scheduler = build_scheduler(
            spec.scheduler,
            self.mode.torch_optimizer,
            base_lr=spec.optimizer.lr,
            epochs=spec.epochs,
            steps_per_epoch=self.plan.steps_per_epoch,
        )
        self.epoch, self.batch, self.global_step = 0, 0, 0
        self.accumulator = EpochAccumulator()
        self.last_lr = spec.optimizer.lr
        self.history: list[dict[str, Any]] = []
        if saved is not None:
            self._restore(saved)

    # ---- building ----------------------------------------------------------------------------------
    def _load_method_state(self, step: MTLStep, saved: dict[str, Any] | None) -> None:
        """The method's state and learnable weights, before the optimizer exists: DeepSpeed's stage 3 partitions
        the learnable weights when it is built."""
        if saved is None:
            return
        step.load_state_dict(state_on_device(saved["mtl_step"], self.ctx.device))
        with torch.no_grad():
            for param, value in zip(step.parameters(), saved["weighting_parameters"], strict=True):
                param.copy_(value)

    # ---- checkpoints -------------------------------------------------------------------------------
    def _check_compatible(self, saved: dict[str, Any]) -> None:
        current = self.spec.model_dump(mode="json", exclude=set(TrainSpec.EXECUTION_FIELDS))
        recorded = {key: _recorded(saved["spec"], key) for key in current}
        mismatches = [
            ConfigProblem(key, current[key], f"differs from the checkpoint's {recorded[key]!r}", "the same value")
            for key in current
            if current[key] != recorded[key]
        ]
        if saved["dtype"] != self.options.dtype:
            mismatches.append(
                ConfigProblem("options.dtype", self.options.dtype, "differs from the checkpoint", saved["dtype"])
            )
        if mismatches:
            raise ConfigError(mismatches, f"resuming {self.rundir.latest}")

    def _gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (on CPU), in rank order, on rank 0 only (the one that writes the checkpoint:
        the other ranks hold their own state, not N copies); ``[value]`` locally, ``[]`` on the other ranks."""
        value = _to_cpu(value)
        if not self.ctx.distributed:
            return [value]
        gathered: list[Any] | None = [None] * self.ctx.world_size if self.ctx.leader else None
        dist.gather_object(value, gathered, dst=0)
        return gathered or []

    def save(self, *, epoch_end: bool = False) -> None:
        """Write ``latest`` (and ``epoch_NNNN`` at an epoch end when asked); a collective on every rank."""
        optimizer_states = self._gather(self.mode.optimizer_state())
        rng_states = self._gather(checkpoint.capture_rng(self.ctx.device))
        with self.mode.full_parameters():
            # copies: zero3 frees the gathered tensors when the block ends
            state = self.model.state_dict() if self.ctx.leader else {}
            model_state = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
            weighting_parameters = [p.detach().to("cpu", copy=True) for p in self.step.parameters()]
            method_state = _to_cpu(self.step.state_dict())
        if not self.ctx.leader:
            return
        payload = {
            "spec": self.spec.model_dump(mode="json"),
            "dtype": self.options.dtype,
            "world_size": self.ctx.world_size,
            "position": {"epoch": self.epoch, "batch": self.batch, "step": self.global_step},
            "model": model_state,
            "problem": self.problem.state_dict(),
            "optimizer": optimizer_states,
            "scheduler": self.scheduler.state_dict(),
            "mtl_step": method_state,
            "weighting_parameters": weighting_parameters,
            "sampler": {"seed": self.plan.seed, "epoch": self.epoch, "batch": self.batch},
            "rng": rng_states,
            "accumulator": self.accumulator.state_dict(),
            "history": self.history,
        }
        checkpoint.save(self.rundir.latest, payload)
        if epoch_end and self.options.keep_epoch_checkpoints:
            checkpoint.save(self.rundir.epoch_checkpoint(self.epoch), payload)

    def _restore(self, saved: dict[str, Any]) -> None:
        rank = self.ctx.rank
        self.mode.load_optimizer_state(saved["optimizer"][rank])
        self.scheduler.load_state_dict(saved["scheduler"])
        position = saved["position"]
        self.epoch, self.batch, self.global_step = position["epoch"], position["batch"], position["step"]
        self.accumulator = EpochAccumulator.from_state(saved["accumulator"])
        self.history = list(saved["history"])
        checkpoint.restore_rng(saved["rng"][rank], self.ctx.device)

    # ---- one step ----------------------------------------------------------------------------------
    def _closure(self, inputs: Any, targets: Any) -> Callable[[], Tensor | tuple[Tensor, Tensor]]:
        wants_representation = self.step.aggregator.uses_representation and self.model.has_representation

        def closure() -> Tensor | tuple[Tensor, Tensor]:
            with self.autocast():
                if wants_representation:
                    outputs, representation = self.model.forward_with_representation(inputs)
                else:
                    outputs, representation = self.model(inputs), None
                losses = self.problem.losses(outputs, targets)
            losses = losses.to(self.dtype)  # the step checks the first forward's losses (NonFiniteLossesError)
            return losses if representation is None else (losses, representation)

        return closure

    def autocast(self) -> torch.autocast:
        """bfloat16 autocast on the run's device when the spec asks for bf16, else a disabled one."""
        return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=self.spec.precision == "bf16")

    def _take_step(self, inputs: Any, targets: Any) -> dict[str, float]:
        """One training step on a batch already on the device: the MTL step and its optimizer update, as the
        sharding mode distributes them, then the schedule."""
        started = time.perf_counter()
        closure = self._closure(model_input(inputs), targets)

        def run_step() -> StepRecord:
            try:
                return self.step(closure)
            except NonFiniteLossesError as error:  # rank means: every rank raises at this step
                raise NonFiniteLossError(
                    step=self.global_step + 1,
                    epoch=self.epoch + 1,
                    tasks=[self.tasks[i] for i in error.indices],
                    values=error.values,
                ) from None
            except MethodError as error:
                raise TrainingFailedError(
                    f"step {self.global_step + 1} (epoch {self.epoch + 1}) failed: {error}",
                    step=self.global_step + 1,
                    epoch=self.epoch + 1,
                ) from error

        record = self.mode.take_step(run_step)
        lr = self.mode.torch_optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        seconds = time.perf_counter() - started
        metrics = step_metrics(
            record,
            self.tasks,
            samples=self.plan.global_batch,
            seconds=seconds,
            communication_bytes=self.mode.communication_bytes(),
        )
        return {"lr": lr, **metrics}

    # ---- the loop ----------------------------------------------------------------------------------
    def _stop_requested(self) -> bool:
        local = bool(self.should_stop and self.should_stop()) or bool(
            self.ctx.stop_event and self.ctx.stop_event.is_set()
        )
        if not self.ctx.distributed:
            return local
        flag = torch.full((1,), float(local), device=self.ctx.device)  # filled there: no copy from the host to wait on
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _max_steps_reached(self) -> bool:
        return self.options.max_steps is not None and self.global_step >= self.options.max_steps

    def run(self) -> dict[str, Any]:
        """Train to the end (SUCCEEDED) or to a stop (STOPPED); the summary is returned and, on rank 0, written.

        Raises ``TrainingFailedError`` (``NonFiniteLossError`` for a NaN/inf loss) after writing a FAILED summary.
        """
        try:
            status = self._loop()
        except TrainingFailedError as failure:
            self._finish(STATUS_FAILED, failure.details())
            raise
        return self._finish(status, None)

    def _loop(self) -> str:
        while self.epoch < self.spec.epochs:
            bar = tqdm(
                total=self.plan.steps_per_epoch,
                initial=self.batch,
                desc=f"epoch {self.epoch + 1}/{self.spec.epochs}",
                disable=not (self.options.progress and self.ctx.leader),
                file=sys.stderr,
                leave=False,
            )
            planned = self.plan.batches(self.epoch, self.batch)
            batches = prefetch(self.train_data, planned, self.ctx.device, self.dtype, self.loader_workers)
            with bar, batches:
                for batch, _, (inputs, targets) in batches:
                    if self._stop_requested():
                        self.save()
                        return STATUS_STOPPED
                    metrics = self._take_step(inputs, targets)
                    self.last_lr = metrics["lr"]
                    self.global_step += 1
                    self.batch = batch + 1
                    self.accumulator.add(metrics, self.tasks, self.plan.global_batch)
                    self._log_step(metrics)
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{metrics['loss']:.4f}",
                        samples_s=f"{metrics['samples_per_s']:.0f}",
                        conflict=f"{metrics.get('conflict_ratio', float('nan')):.2f}",
                    )
                    if self.batch < self.plan.steps_per_epoch:
                        if self._max_steps_reached():
                            self.save()
                            return STATUS_STOPPED
                        if self.options.checkpoint_every and self.global_step % self.options.checkpoint_every == 0:
                            self.save()
            self._end_epoch()
            if self._max_steps_reached() and self.epoch < self.spec.epochs:
                return STATUS_STOPPED
        return STATUS_SUCCEEDED

    def _log_step(self, metrics: dict[str, float]) -> None:
        if self.ctx.leader and self.global_step % self.options.log_every == 0:
            line = {"step": self.global_step, "epoch": self.epoch + 1, "batch": self.batch}
            self.rundir.append(self.rundir.step_metrics, {**line, **metrics})

    def _sum_over_ranks(self, tensor: Tensor) -> Tensor:
        if not self.ctx.distributed:
            return tensor
        moved = tensor.to(self.ctx.device)
        dist.all_reduce(moved)
        return moved.to(tensor.device)

    def _end_epoch(self) -> None:
        self.step.end_epoch()
        split = self.options.eval_split
        with self.mode.full_parameters(), self.autocast():
            results = evaluate(
                self.problem,
                self.model,
                split,
                device=self.ctx.device,
                dtype=self.dtype,
                batch_size=self.options.eval_batch_size,
                rank=self.ctx.rank,
                world_size=self.ctx.world_size,
                sum_over_ranks=self._sum_over_ranks,
                loader_workers=self.loader_workers,
            )
        record: dict[str, Any] = {"epoch": self.epoch + 1, "step": self.global_step}
        record["lr"] = self.last_lr
        record.update(self.accumulator.means(self.tasks))
        record.update({f"{split}/{key}": value for key, value in results.items()})
        if self.references:
            record["delta_m"] = delta_m(results, self.references, self.problem.metric_directions())
        self.history.append(record)
        self.epoch += 1
        self.batch = 0
        self.accumulator = EpochAccumulator()
        if self.ctx.leader:
            self.rundir.append(self.rundir.epoch_metrics, record)
            if self.on_epoch is not None:
                self.on_epoch(dict(record))
        self.save(epoch_end=True)

    def _finish(self, status: str, error: dict[str, Any] | None) -> dict[str, Any]:
        final = self.history[-1] if self.history else {}
        summary = {
            "status": status,
            "name": self.spec.name,
            "problem": self.spec.problem,
            "method": {kind: getattr(self.spec.method, kind).name for kind in ("weighting", "aggregator", "wrapper")},
            "processes": self.ctx.world_size,
            "sharding": self.spec.sharding,
            "epochs": self.spec.epochs,
            "epochs_completed": self.epoch,
            "steps": self.global_step,
            "position": {"epoch": self.epoch, "batch": self.batch},
            "final": final,
            "delta_m": final.get("delta_m"),
            "references": self.references,
            "error": error,
            "checkpoint": str(self.rundir.latest.relative_to(self.rundir.root))
            if self.rundir.latest.exists()
            else None,
            "wall_seconds": time.perf_counter() - self.started,
        }
        if self.ctx.leader:
            self.rundir.write_json(self.rundir.summary, summary)
            if self.options.plots:
                plots.draw(self.rundir, self.tasks)
        return summary


def _recorded(spec: dict[str, Any], key: str) -> Any:
    """A spec field as a checkpoint recorded it; the field's default where the checkpoint predates the field."""
    if key in spec:
        return spec[key]
    return to_jsonable_python(TrainSpec.model_fields[key].get_default(call_default_factory=True))
