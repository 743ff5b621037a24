"""The ``Problem`` contract: datasets, model, per-task losses and metrics of one benchmark, by name."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from flatmtl.workers.problems.errors import ProblemError
from flatmtl.workers.problems.models import MultiTaskNet, build_model
from flatmtl.workers.problems.tasks import Task, stack_losses

Sample = tuple[Any, tuple[Tensor, ...]]


class TaskTensorDataset(Dataset[Sample]):
    """In-memory inputs and one target tensor per task; item ``i`` is ``(inputs[i], (t_1[i], ..., t_K[i]))``."""

    def __init__(self, inputs: Tensor, targets: Sequence[Tensor]) -> None:
        if any(len(t) != len(inputs) for t in targets):
            raise ProblemError(f"targets of lengths {[len(t) for t in targets]} do not match {len(inputs)} inputs")
        self.inputs = inputs
        self.targets = list(targets)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> Sample:
        return self.inputs[index], tuple(t[index] for t in self.targets)

    def batch(self, indices: Sequence[int] | Tensor) -> Sample:
        """Samples ``indices`` already collated: one gather per tensor instead of one lookup per sample."""
        rows = torch.as_tensor(indices, dtype=torch.long)
        return self.inputs[rows], tuple(t[rows] for t in self.targets)


class ZipTasks(Dataset[Sample]):
    """A multi-input training set: item ``i`` holds item ``i mod len_t`` of every task's own dataset, as
    ``((x_1, ..., x_K), (y_1, ..., y_K))``; its length is the longest task's, so shorter ones wrap around."""

    def __init__(self, datasets: Sequence[Dataset[tuple[Tensor, Tensor]]]) -> None:
        self.datasets = list(datasets)
        self.lengths = [len(d) for d in self.datasets]  # type: ignore[arg-type]
        if not self.lengths or min(self.lengths) == 0:
            raise ProblemError(f"every task of a multi-input problem needs samples, got lengths {self.lengths}")

    def __len__(self) -> int:
        return max(self.lengths)

    def __getitem__(self, index: int) -> Sample:
        pairs = [d[index % n] for d, n in zip(self.datasets, self.lengths, strict=True)]
        return tuple(x for x, _ in pairs), tuple(y for _, y in pairs)


class MetricSet:
    """One meter per task; ``compute()`` gives ``{"task/metric": value}``. To merge ranks, sum every
    ``meters[t].state`` (e.g. ``dist.all_reduce``) before computing."""

    def __init__(self, tasks: Sequence[Task]) -> None:
        self.tasks = list(tasks)
        self.meters = [task.kind.meter() for task in self.tasks]

    def update(self, outputs: Sequence[Tensor], targets: Sequence[Tensor]) -> None:
        for meter, output, target in zip(self.meters, outputs, targets, strict=True):
            meter.update(output, target)

    def update_task(self, index: int, output: Tensor, target: Tensor) -> None:
        self.meters[index].update(output, target)

    def reset(self) -> None:
        for meter in self.meters:
            meter.reset()

    def compute(self) -> dict[str, float]:
        return {
            f"{t.name}/{k}": v for t, m in zip(self.tasks, self.meters, strict=True) for k, v in m.compute().items()
        }

    @property
    def directions(self) -> dict[str, bool | None]:
        return {
            f"{t.name}/{k}": v for t, m in zip(self.tasks, self.meters, strict=True) for k, v in m.directions.items()
        }


def _to(value: Any, device: torch.device | str) -> Any:
    if isinstance(value, Tensor):
        return value.to(device)
    return type(value)(_to(v, device) for v in value)


class Problem:
    """One benchmark. Subclasses set ``tasks`` and ``input_shape`` in ``__init__`` (checking that their files
    exist, so a wrong path fails at once) and load a split in ``_load``; datasets are built on first use."""

    name: ClassVar[str]
    model_names: ClassVar[tuple[str, ...]]
    default_model: ClassVar[str]
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    multi_input: ClassVar[bool] = False

    tasks: list[Task]
    input_shape: tuple[int, ...]

    def __init__(self, *, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ProblemError(f"{self.name}: seed must be a non-negative integer, got {seed!r}")
        self.seed = seed
        self._datasets: dict[str, Dataset[Sample]] = {}

    @property
    def task_names(self) -> list[str]:
        return [task.name for task in self.tasks]

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ProblemError(f"{self.name}: unknown split {split!r}; known: {list(self.splits)}")

    def dataset(self, split: str) -> Dataset[Sample]:
        """Items ``(input, (target_1, ..., target_K))``; for multi-input problems a ``ZipTasks`` whose input is a
        tuple of K inputs (use ``task_datasets`` to evaluate each task on all of its own samples)."""
        self._check_split(split)
        if split not in self._datasets:
            self._datasets[split] = ZipTasks(self.task_datasets(split)) if self.multi_input else self._load(split)
        return self._datasets[split]

    def _load(self, split: str) -> Dataset[Sample]:
        raise NotImplementedError

    def task_datasets(self, split: str) -> list[Dataset[tuple[Tensor, Tensor]]]:
        """Multi-input problems only: each task's own ``(input, target)`` dataset."""
        raise ProblemError(f"{self.name} has one input for all tasks; use dataset(split)")

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must carry to rebuild this problem's inputs as training saw them (a table's
        standardisation and vocabularies); nothing for problems whose data is a pure function of the options."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Use a checkpoint's ``state_dict()`` for every split."""

    def model(self, name: str | None = None, **options: Any) -> MultiTaskNet:
        """The named architecture (default ``default_model``) sized for this problem's inputs and tasks."""
        from flatmtl.workers.problems import plugins

        name = name or self.default_model
        if name in plugins.model_plugins():
            return plugins.build_plugin_model(name, self, **options)
        if name not in self.model_names:
            allowed = list(dict.fromkeys([*self.model_names, *plugins.model_plugins()]))
            raise ProblemError(f"{self.name}: model {name!r} does not fit this problem; choose from {allowed}")
        return build_model(name, self.input_shape, self.tasks, multi_input=self.multi_input, **options)

    def losses(self, outputs: Sequence[Tensor], targets: Sequence[Tensor]) -> Tensor:
        """The K per-task losses [K] of a batch."""
        return stack_losses(self.tasks, list(outputs), list(targets))

    def metrics(self) -> MetricSet:
        return MetricSet(self.tasks)

    def metric_directions(self) -> dict[str, bool | None]:
        return self.metrics().directions

    @torch.no_grad()
    def evaluate(
        self, model: MultiTaskNet, split: str = "test", *, batch_size: int = 256, device: torch.device | str = "cpu"
    ) -> dict[str, float]:
        """Every task's metrics on a whole split, in eval mode (restoring the model's mode afterwards); batches go
        to ``device``, where the model must already be."""
        self._check_split(split)
        was_training = model.training
        model.eval()
        metric_set = self.metrics()
        if self.multi_input:
            for index, data in enumerate(self.task_datasets(split)):
                for x, y in DataLoader(data, batch_size=batch_size):
                    inputs = [x.to(device) if t == index else x[:0].to(device) for t in range(self.num_tasks)]
                    metric_set.update_task(index, model(inputs)[index], y.to(device))
        else:
            for x, targets in DataLoader(self.dataset(split), batch_size=batch_size):
                metric_set.update(model(_to(x, device)), _to(targets, device))
        model.train(was_training)
        return metric_set.compute()
