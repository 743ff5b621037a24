"""The MTL step: one batch's update from the per-task losses, weighting x aggregator x wrapper, on any model that
declares which parameters are shared and which belong to which task. It fills the gradients; the optimizer
steps. (A training run calls it from ``flatmtl.workers.training.trainer``, through the engine's sharding modes.)

Usage::

    step = MTLStep.from_model(model, weighting="ew", aggregator="mgda", wrapper="fmtl", seed=0)
    optimizer = torch.optim.Adam([*model.parameters(), *step.parameters()])
    record = step(lambda: model.task_losses(batch))   # fills .grad
    optimizer.step()
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from flatmtl.workers.mtl import registry
from flatmtl.workers.mtl.base import Aggregator, LossWeighting, Wrapper, map_tensors
from flatmtl.workers.mtl.communicator import Communicator, LocalComm
from flatmtl.workers.mtl.errors import MethodError
from flatmtl.workers.mtl.flat import FlatParams
from flatmtl.workers.mtl.oracle import GradientOracle, LossClosure, OneBackwardInputs, StepRecord, model_buffers
from flatmtl.workers.mtl.probes import BatchedProbes
from flatmtl.workers.mtl.task_gradients import GradientMode, TaskGradientEngine
from flatmtl.workers.mtl.trunk import TrunkCut

DEFAULT_DIAGNOSTICS_EVERY = 200
"""Steps between diagnostics steps, where per-task gradients and their Gram are taken even for methods that
need neither (an averaging aggregator takes one backward otherwise). The first step is one. A diagnostics
step costs what K per-task gradients cost (several plain steps on a model with many tasks), so it is spread
thin enough that the EW family stays close to plain backprop (``benchmarks/mtl_baselines.py`` measures the
share), while a run of hundreds of steps per epoch still reports them every epoch and a dashboard scraped every
few seconds sees the series move."""


class MultiTaskModel(Protocol):
    def shared_parameters(self) -> Sequence[nn.Parameter]: ...

    def task_parameters(self) -> Sequence[Sequence[nn.Parameter]]: ...


@dataclass
class ParameterSplit:
    """Shared parameters and, per task, that task's own parameters (its head).

    ``task_heads``, where given, are the modules (one per task) whose inputs carry every dependence of
    that task's loss on the shared parameters; per-task gradients then take the two-stage path of
    ``flatmtl.workers.mtl.trunk``. A model declares them with a ``task_heads()`` method returning them or None.
    ``model``, where given, owns the shared parameters; forward-only probes (SAMO's SPSA) then batch
    their points into vmapped forwards (``flatmtl.workers.mtl.probes``).
    """

    shared: list[nn.Parameter]
    heads: list[list[nn.Parameter]]
    task_heads: list[nn.Module] | None = None
    model: nn.Module | None = None

    @classmethod
    def from_model(cls, model: MultiTaskModel) -> ParameterSplit:
        declared = getattr(model, "task_heads", None)
        task_heads = declared() if callable(declared) else None
        split = cls(
            list(model.shared_parameters()),
            [list(h) for h in model.task_parameters()],
            None if task_heads is None else list(task_heads),
            model if isinstance(model, nn.Module) else None,
        )
        split.check()
        return split

    def check(self) -> None:
        if not self.shared:
            raise MethodError("the model declares no shared parameters")
        if not self.heads:
            raise MethodError("the model declares no tasks")
        seen: set[int] = set()
        for param in [*self.shared, *(p for head in self.heads for p in head)]:
            if id(param) in seen:
                raise MethodError("a parameter is declared twice (shared and task-specific, or in two heads)")
            seen.add(id(param))
        if self.task_heads is not None and len(self.task_heads) != len(self.heads):
            raise MethodError(f"the model declares {len(self.task_heads)} task heads for {len(self.heads)} tasks")


def _build(kind: registry.Kind, method: str | Any, hparams: dict[str, Any] | None) -> Any:
    if isinstance(method, str):
        return registry.build(kind, method, **(hparams or {}))
    if hparams:
        raise MethodError(f"{kind} hyper-parameters given for an already built {kind}")
    return method


class MTLStep:
    """Composes the three methods and runs a step per call; holds the step's random generator.

    ``oracle_class`` is where parameters live: sharded training substitutes an oracle whose random
    directions are this rank's slice of the unsharded draw."""

    oracle_class: type[GradientOracle] = GradientOracle

    def __init__(
        self,
        split: ParameterSplit,
        *,
        weighting: str | LossWeighting = "ew",
        aggregator: str | Aggregator = "mean",
        wrapper: str | Wrapper = "none",
        weighting_hparams: dict[str, Any] | None = None,
        aggregator_hparams: dict[str, Any] | None = None,
        wrapper_hparams: dict[str, Any] | None = None,
        comm: Communicator | None = None,
        seed: int = 0,
        buffers: Sequence[Tensor] = (),
        gradient_mode: GradientMode = "auto",
        diagnostics_every: int = DEFAULT_DIAGNOSTICS_EVERY,
    ) -> None:
        if isinstance(diagnostics_every, bool) or not isinstance(diagnostics_every, int) or diagnostics_every < 1:
            raise MethodError(f"diagnostics_every={diagnostics_every!r} is not allowed; allowed: an integer >= 1")
        split.check()
        self.split = split
        self.num_tasks = len(split.heads)
        self.weighting: LossWeighting = _build("weighting", weighting, weighting_hparams)
        self.weighting.setup(self.num_tasks, dtype=split.shared[0].dtype, device=split.shared[0].device)
        self.aggregator: Aggregator = _build("aggregator", aggregator, aggregator_hparams)
        self.wrapper: Wrapper = _build("wrapper", wrapper, wrapper_hparams)
        self.comm = comm or LocalComm()
        self.shared = FlatParams(split.shared)
        self.heads = [FlatParams(head, like=split.shared[0]) for head in split.heads]
        self.one_backward = OneBackwardInputs(self.shared, self.heads)
        self.generator = torch.Generator(device=split.shared[0].device).manual_seed(seed)
        self.host_generator = (
            self.generator if self.generator.device.type == "cpu" else torch.Generator().manual_seed(seed)
        )
        """Aggregators' draws (task orders, GradDrop's seed) are K-sized and used on the host: from a CUDA
        generator each would be read back, a wait per draw; on the CPU this is the step's one generator."""
        self.buffers = list(buffers)
        self.gradient_engine = TaskGradientEngine(gradient_mode)
        self.trunk = None if split.task_heads is None else TrunkCut(split.task_heads)
        self.probes = None if split.model is None else BatchedProbes(split.model, split.shared)
        self.diagnostics_every = diagnostics_every
        self.steps_taken = 0
        self._choice_recorded = False

    @classmethod
    def from_model(cls, model: nn.Module, **kwargs: Any) -> MTLStep:
        """Split from the model's ``shared_parameters()``/``task_parameters()``; its buffers (BatchNorm
        statistics) are restored after every perturbed pass."""
        return cls(ParameterSplit.from_model(model), buffers=model_buffers(model), **kwargs)  # type: ignore[arg-type]

    def parameters(self) -> list[Tensor]:
        """Learnable parameters of the weighting (UW, IMTL-L): give them to the optimizer."""
        return self.weighting.parameters()

    def __call__(self, closure: LossClosure) -> StepRecord:
        oracle = self.oracle(closure, diagnostics=self.steps_taken % self.diagnostics_every == 0)
        started = oracle.clock()
        try:
            self.wrapper.step(oracle)
        except MethodError:
            oracle.on_host()  # losses still unread are checked first: a NaN loss is what any later check met
            raise
        oracle.record.seconds_total = oracle.clock() - started
        self.steps_taken += 1
        if self.gradient_engine.choice and not self._choice_recorded:  # once, on the step that made it
            oracle.record.extras.update(self.gradient_engine.choice)
            self._choice_recorded = True
        return oracle.record

    def oracle(self, closure: LossClosure, *, diagnostics: bool = True) -> GradientOracle:
        """The primitives one step is composed from, for this closure (a wrapper's view of the step).
        ``diagnostics``: the step records the per-task gradients' Gram even where the method needs none."""
        return self.oracle_class(
            closure,
            self.shared,
            self.heads,
            self.weighting,
            self.aggregator,
            self.comm,
            self.generator,
            self.gradient_engine,
            self.buffers,
            self.trunk,
            self.probes,
            diagnostics=diagnostics,
            host_generator=self.host_generator,
            one_backward=self.one_backward,
        )

    def end_epoch(self) -> None:
        self.weighting.end_epoch()

    def state_dict(self) -> dict[str, Any]:
        return {
            "weighting": self.weighting.state_dict(),
            "aggregator": self.aggregator.state_dict(),
            "wrapper": self.wrapper.state_dict(),
            "generator": self.generator.get_state(),
            "generator_device": self.generator.device.type,
            "host_generator": None if self.host_generator is self.generator else self.host_generator.get_state(),
            "steps_taken": self.steps_taken,
            "gradient_engine": self.gradient_engine.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weighting.load_state_dict(state["weighting"])
        self.aggregator.load_state_dict(state["aggregator"])
        self.wrapper.load_state_dict(state["wrapper"])
        self.steps_taken = state.get("steps_taken", 0)
        if "gradient_engine" in state:
            self.gradient_engine.load_state_dict(state["gradient_engine"])
            self._choice_recorded = self.gradient_engine.mode != "auto"
        saved_on = state.get("generator_device", self.generator.device.type)
        separate_host = self.host_generator is not self.generator
        if saved_on == self.generator.device.type:
            self.generator.set_state(state["generator"])
            if separate_host and state.get("host_generator") is not None:
                self.host_generator.set_state(state["host_generator"])
            return
        self.generator.manual_seed(reseeded(state["generator"]))
        host_state = state["generator"] if saved_on == "cpu" else state.get("host_generator")
        if separate_host and host_state is not None:  # the aggregators' stream continues across the move
            self.host_generator.set_state(host_state)


GENERATOR_STATES = ("generator", "host_generator")
"""``MTLStep.state_dict()``'s generator states: byte tensors that torch's generators, CUDA's included, take only on
the CPU (a CPU or CUDA generator's ``set_state`` refuses a state on a GPU)."""


def state_on_device(state: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """A saved ``MTLStep.state_dict()`` with the methods' tensors on the run's ``device`` (a checkpoint is loaded on
    the CPU) and the generator states left on the CPU, where ``load_state_dict`` can hand them to the generators.
    Methods that keep state on the host move it back there themselves (``Stateful.host_state_keys``)."""
    return {
        key: value if key in GENERATOR_STATES else map_tensors(lambda tensor: tensor.to(device), value)
        for key, value in state.items()
    }


def reseeded(generator_state: Tensor) -> int:
    """A seed derived from a generator state saved on another device type. CPU (Mersenne Twister) and CUDA
    (Philox) generators share neither their state layout nor their draws, so a run that resumes across device
    types cannot continue the saved stream; it continues a stream fixed by the checkpoint instead, the same on
    every rank and every retry."""
    return int.from_bytes(hashlib.sha256(generator_state.cpu().numpy().tobytes()).digest()[:8], "little")
