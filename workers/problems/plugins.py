"""Problems and models from installed packages, through the entry-point groups ``flatmtl.problems`` and
``flatmtl.models``; they become names like the built-in ones.

A package declares, in its ``pyproject.toml``::

    [project.entry-points."flatmtl.problems"]
    sines = "my_package.problem:Sines"          # a subclass of flatmtl.workers.problems.Problem
    [project.entry-points."flatmtl.models"]
    two_towers = "my_package.model:two_towers"  # (input_shape, tasks, **options) -> MultiTaskNet

The contract is checked where it can fail: the class when the entry point loads (a ``Problem`` subclass with
``model_names``, ``default_model`` and its own ``_load``), the built problem's ``tasks`` and ``input_shape``, and,
by :func:`check_sample`, one batch through the model (K outputs of the tasks' widths, K losses, parameters split
into shared and per-task). Each error names the plugin, the entry point and what is missing or wrong. A plugin
that fails to import fails only jobs that name it.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import default_collate

from flatmtl.workers.problems.base import Problem
from flatmtl.workers.problems.errors import ProblemError
from flatmtl.workers.problems.models.base import MultiTaskNet
from flatmtl.workers.problems.tasks import Task, TaskKind

PROBLEM_GROUP = "flatmtl.problems"
MODEL_GROUP = "flatmtl.models"
ModelFactory = Callable[..., MultiTaskNet]


@dataclass(frozen=True)
class Plugin:
    """One entry point: where it comes from, and the loaded object or the reason it could not load."""

    name: str
    target: str
    distribution: str
    loaded: Any = None
    error: str | None = None

    @property
    def source(self) -> str:
        return f"plugin {self.distribution} ({self.target})"

    def get(self, what: str) -> Any:
        if self.error is not None:
            raise ProblemError(f"{what} {self.name!r} from {self.source} cannot be used: {self.error}")
        return self.loaded


def _entry_points(group: str, builtin: Sequence[str], check: Callable[[str, Any], None]) -> dict[str, Plugin]:
    found: dict[str, Plugin] = {}
    for entry in metadata.entry_points(group=group):
        distribution = entry.dist.name if entry.dist is not None else "an unnamed distribution"
        plugin = Plugin(entry.name, entry.value, distribution)
        if entry.name in builtin or entry.name in found:
            other = "a built-in one" if entry.name in builtin else found[entry.name].source
            plugin = Plugin(entry.name, entry.value, distribution, error=f"the name is taken by {other}")
        else:
            try:
                loaded = entry.load()
                check(entry.name, loaded)
                plugin = Plugin(entry.name, entry.value, distribution, loaded=loaded)
            except ProblemError as error:
                plugin = Plugin(entry.name, entry.value, distribution, error=str(error))
            except Exception as error:  # a plugin's import may raise anything: it fails the jobs naming it
                plugin = Plugin(entry.name, entry.value, distribution, error=f"import failed: {error!r}")
        found[entry.name] = plugin
    return found


def check_problem_class(name: str, cls: Any) -> None:
    """The class side of the contract, before any instance exists."""
    where = f"plugin problem {name!r}"
    if not isinstance(cls, type) or not issubclass(cls, Problem):
        raise ProblemError(f"{where}: {cls!r} is not a subclass of flatmtl.workers.problems.Problem")
    names = getattr(cls, "model_names", None)
    if not isinstance(names, tuple) or not names or not all(isinstance(n, str) for n in names):
        raise ProblemError(f"{where}: class attribute model_names must be a non-empty tuple of model names")
    if getattr(cls, "default_model", None) not in names:
        raise ProblemError(f"{where}: class attribute default_model must be one of model_names {list(names)}")
    if cls.multi_input:
        if cls.task_datasets is Problem.task_datasets:
            raise ProblemError(f"{where}: a multi-input problem must implement task_datasets(split)")
    elif cls._load is Problem._load and cls.dataset is Problem.dataset:
        raise ProblemError(f"{where}: missing method _load(split) -> Dataset of (input, (target_1, ..., target_K))")


def shipped_problem_class(target: str) -> type[Problem]:
    """The Problem class ``module:attribute`` from code shipped with the job (importable from the working
    directory Ray gives the job's ranks), held to the plugin contract; ProblemError names module, attribute
    and what went wrong."""
    module_name, attribute = target.split(":", 1)
    where = f"module {module_name!r}, attribute {attribute!r} of the shipped code"
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # the user's module may raise anything on import
        raise ProblemError(f"{where}: import failed: {type(error).__name__}: {error}") from None
    if not hasattr(module, attribute):
        raise ProblemError(f"{where}: the module has no attribute {attribute!r}")
    cls = getattr(module, attribute)
    try:
        check_problem_class(target, cls)
    except ProblemError as error:
        raise ProblemError(f"{where}: {error}") from None
    return cls  # type: ignore[no-any-return]


def check_model_factory(name: str, factory: Any) -> None:
    if not callable(factory):
        raise ProblemError(f"plugin model {name!r}: {factory!r} is not callable as (input_shape, tasks, **options)")


@functools.cache
def problem_plugins() -> dict[str, Plugin]:
    from flatmtl.workers.problems.registry import PROBLEMS

    return _entry_points(PROBLEM_GROUP, list(PROBLEMS), check_problem_class)


@functools.cache
def model_plugins() -> dict[str, Plugin]:
    from flatmtl.workers.problems.models import MODEL_NAMES

    return _entry_points(MODEL_GROUP, MODEL_NAMES, check_model_factory)


def check_problem(name: str, problem: Problem) -> None:
    """A built problem's declarations: K named tasks of known kinds and the shape of one input."""
    where = f"plugin problem {name!r}"
    tasks = getattr(problem, "tasks", None)
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, Task) for t in tasks):
        raise ProblemError(f"{where}: __init__ must set self.tasks to a non-empty list of Task(name, kind)")
    bad = [t.name for t in tasks if not isinstance(t.kind, TaskKind)]
    if bad:
        raise ProblemError(f"{where}: task(s) {bad} have a kind that is no flatmtl.workers.problems.tasks.TaskKind")
    if len({t.name for t in tasks}) != len(tasks):
        raise ProblemError(f"{where}: task names {[t.name for t in tasks]} are not unique")
    shape = getattr(problem, "input_shape", None)
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ProblemError(f"{where}: __init__ must set self.input_shape to a tuple of positive ints, got {shape!r}")


def build_plugin_model(name: str, problem: Problem, **options: Any) -> MultiTaskNet:
    factory = model_plugins()[name].get("model")
    try:
        model = factory(problem.input_shape, problem.tasks, **options)
    except TypeError as error:
        raise ProblemError(f"plugin model {name!r}: {error}") from None
    if not isinstance(model, nn.Module):
        raise ProblemError(f"plugin model {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    for method in ("shared_parameters", "task_parameters", "forward_with_representation"):
        if not callable(getattr(model, method, None)):
            raise ProblemError(f"plugin model {name!r}: its {type(model).__name__} has no method {method}()")
    return model  # type: ignore[return-value]


def check_sample(where: str, problem: Problem, model: MultiTaskNet, batch: int = 2) -> None:
    """One batch of the training split through the model and the losses: the shapes the engine relies on."""
    tasks = problem.tasks
    shared, own = list(model.shared_parameters()), list(model.task_parameters())
    if len(own) != len(tasks):
        raise ProblemError(f"{where}: task_parameters() gives {len(own)} lists for {len(tasks)} tasks")
    ids = [id(p) for p in [*shared, *(p for params in own for p in params)]]
    if len(set(ids)) != len(ids) or set(ids) != {id(p) for p in model.parameters()}:
        raise ProblemError(
            f"{where}: shared_parameters() and task_parameters() must be disjoint and cover model.parameters()"
        )
    data = problem.dataset("train")
    size = min(batch, len(data))  # type: ignore[arg-type]
    if size == 0:
        raise ProblemError(f"{where}: dataset('train') is empty")
    gather = getattr(data, "batch", None)
    indices = list(range(size))
    inputs, targets = gather(indices) if callable(gather) else default_collate([data[i] for i in indices])
    with torch.no_grad():
        outputs = model(list(inputs) if isinstance(inputs, tuple) else inputs)
        if not isinstance(outputs, list | tuple) or len(outputs) != len(tasks):
            count = len(outputs) if isinstance(outputs, list | tuple) else type(outputs).__name__
            raise ProblemError(f"{where}: the model returned {count} outputs for {len(tasks)} tasks; one per task")
        for task, output in zip(tasks, outputs, strict=True):
            _check_output(where, task, output, size)
        if not isinstance(targets, list | tuple) or len(targets) != len(tasks):
            raise ProblemError(f"{where}: dataset items must be (input, (target_1, ..., target_{len(tasks)}))")
        losses = problem.losses(outputs, targets)
    if not isinstance(losses, Tensor) or tuple(losses.shape) != (len(tasks),):
        shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
        raise ProblemError(f"{where}: losses() returned {shape}; expected one loss per task, shape ({len(tasks)},)")


def _check_output(where: str, task: Task, output: Any, size: int) -> None:
    if not isinstance(output, Tensor):
        raise ProblemError(f"{where}: the output for task {task.name!r} is {type(output).__name__}, not a tensor")
    if task.kind.dense or output.dim() < 2:
        if output.shape[:1] != (size,):
            raise ProblemError(f"{where}: the output for task {task.name!r} has shape {tuple(output.shape)}")
        return
    if output.shape[0] != size or output.shape[1] != task.kind.out_channels:
        raise ProblemError(
            f"{where}: the output for task {task.name!r} has shape {tuple(output.shape)}; its kind "
            f"{type(task.kind).__name__} needs ({size}, {task.kind.out_channels})"
        )


def is_plugin(problem: str, model: str | None) -> bool:
    """Whether a spec's problem or model comes from a plugin or shipped code (:func:`check_sample` runs a batch)."""
    return ":" in problem or problem in problem_plugins() or (model is not None and model in model_plugins())
