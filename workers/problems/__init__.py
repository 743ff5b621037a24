"""Benchmark problems: datasets, models, per-task losses and metrics, by name.

    >>> from flatmtl.workers import problems
    >>> problem = problems.build("multi_digits", seed=0, train_size=6000)
    >>> train, test = problem.dataset("train"), problem.dataset("test")   # items (input, (y_1, ..., y_K))
    >>> model = problem.model("mlp", hidden=(64,))                       # or problem.model() for the default
    >>> x, targets = next(iter(DataLoader(train, batch_size=64)))
    >>> losses = problem.losses(model(x), targets)                        # [K], one loss per task
    >>> problem.evaluate(model, "test")                                   # {"top_left/accuracy": ..., ...}

The contract, for the training engine:

- ``build(name, **options)``: options are keyword arguments of the problem class (``seed``, sizes,
  ``data_dir``...); ``problem_options(name)`` lists them. Bad names and options raise ``ProblemError``;
  a wrong path raises ``DataNotFoundError`` naming the missing file, when the problem is built.
- ``problem.tasks``: K ``Task(name, kind)``; the kind fixes the output/target convention, the loss and the
  meter (see ``flatmtl.workers.problems.tasks``). ``problem.splits`` names the splits (``train``, ``test``; CelebA
  also ``val``). Datasets and canvases are a pure function of the options, ``seed`` included.
- ``problem.model(name, **options)``: a ``MultiTaskNet`` from ``problem.model_names``. ``model(x)`` gives
  the K outputs; ``shared_parameters()`` and ``task_parameters()`` (one list per task) are disjoint and
  cover every parameter (the contract of ``flatmtl.workers.mtl.step.ParameterSplit``); where
  ``model.has_representation``, ``forward_with_representation(x)`` also returns the shared representation
  for MGDA-UB: the loss closure returns ``(problem.losses(outputs, targets), representation)``.
- ``problem.metrics()``: a ``MetricSet`` to ``update(outputs, targets)`` per batch and ``compute()`` as
  ``{"task/metric": value}``; its meters hold summable float64 ``state`` vectors so ranks can all-reduce
  them. ``problem.metric_directions()`` says per metric whether higher is better (None: descriptive).
- ``delta_m(results, references, directions)``: Δm% against single-task reference values (lower is better).
- Multi-input problems (``problem.multi_input``, Office-Home): ``dataset(split)`` zips the tasks' own
  datasets (inputs and targets are K-tuples, the model takes the list of K inputs);
  ``task_datasets(split)`` gives each task's own; ``evaluate`` scores each task on all of its own samples.

Problems: ``synthetic_regression`` (generated, needs nothing), ``multi_digits`` and ``yeast`` (the
``datasets`` extra), ``multi_mnist``, ``multi_fashion``, ``multi_fashion_mnist``, ``nyuv2``, ``cityscapes``,
``celeba``, ``office_home``, ``qm9``; each module documents its on-disk format. ``table`` trains on the user's
own CSV or Parquet files (the ``tables`` extra; ``flatmtl.workers.problems.table``); installed packages add
problems and models through entry points (``flatmtl.workers.problems.plugins``).
"""

from __future__ import annotations

from flatmtl.workers.problems.base import MetricSet, Problem, TaskTensorDataset, ZipTasks
from flatmtl.workers.problems.canvas import CanvasDataset
from flatmtl.workers.problems.delta import delta_m
from flatmtl.workers.problems.errors import DataNotFoundError, ProblemError
from flatmtl.workers.problems.models import MODEL_NAMES, MultiTaskNet, build_model
from flatmtl.workers.problems.registry import PROBLEMS, build, problem_class, problem_names, problem_options
from flatmtl.workers.problems.tasks import Task

__all__ = [
    "MODEL_NAMES",
    "PROBLEMS",
    "CanvasDataset",
    "DataNotFoundError",
    "MetricSet",
    "MultiTaskNet",
    "Problem",
    "ProblemError",
    "Task",
    "TaskTensorDataset",
    "ZipTasks",
    "build",
    "build_model",
    "delta_m",
    "problem_class",
    "problem_names",
    "problem_options",
]
