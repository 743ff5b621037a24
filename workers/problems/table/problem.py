"""``table``: a multi-task problem from the user's own CSV or Parquet files, no code needed.

Options: ``train_file`` and ``test_file`` (``validation_file`` optional: the ``val`` split), ``tasks`` (see
:mod:`.columns`), ``features`` (default: every column that is no target), ``categorical`` feature columns and
their ``categorical_encoding`` (``embedding`` of ``embedding_dim``, or ``onehot``), ``format`` (``auto``: from
the file name). Paths are read by the processes that train, so on the service they are paths on the workers
(inside the service's data roots, like every ``*_file`` option).

The transform (:mod:`.encoding`) is fitted on the training file; ``state_dict()`` gives it to the checkpoint and
``load_state_dict`` applies a saved one to every split. Metrics per kind: binary accuracy, F1, ROC-AUC and
calibration; multiclass accuracy, macro-F1 and calibration; regression MAE and RMSE in the column's units;
multilabel micro/macro-F1, Hamming loss and subset accuracy. A row without a task's label counts for the
other tasks only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from flatmtl.workers.problems.base import Problem, TaskTensorDataset
from flatmtl.workers.problems.errors import ProblemError
from flatmtl.workers.problems.models import MultiTaskNet, build_model
from flatmtl.workers.problems.models.tabular import ENCODINGS, CategoricalInput, TabularNet
from flatmtl.workers.problems.table.columns import TableTask, feature_columns, parse_tasks
from flatmtl.workers.problems.table.encoding import EncodedTable, TableTransform, encode
from flatmtl.workers.problems.table.kinds import Multilabel, TableBinary, TableMulticlass, TableRegression
from flatmtl.workers.problems.table.reader import FORMATS, ColumnFile
from flatmtl.workers.problems.tasks import Task, TaskKind


class TableProblem(Problem):
    name = "table"
    model_names = ("mlp", "mmoe", "ple")
    default_model = "mlp"

    def __init__(
        self,
        *,
        train_file: str,
        test_file: str,
        tasks: Sequence[dict[str, Any]],
        validation_file: str | None = None,
        features: Sequence[str] | None = None,
        categorical: Sequence[str] | None = None,
        categorical_encoding: str = "embedding",
        embedding_dim: int = 8,
        format: str = "auto",
        seed: int = 0,
    ) -> None:
        super().__init__(seed=seed)
        if format not in FORMATS:
            raise ProblemError(f"table: format = {format!r}: allowed: {list(FORMATS)}")
        if categorical_encoding not in ENCODINGS:
            raise ProblemError(f"table: categorical_encoding = {categorical_encoding!r}: allowed: {list(ENCODINGS)}")
        if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim < 1:
            raise ProblemError(f"table: embedding_dim = {embedding_dim!r}: allowed: an integer >= 1")
        self.table_tasks = parse_tasks(tasks)
        paths = {"train": train_file, "test": test_file}
        if validation_file is not None:
            paths["val"] = validation_file
        for split, path in paths.items():
            if not isinstance(path, str) or not path:
                raise ProblemError(f"table: {_option(split)} = {path!r}: allowed: the path of a CSV or Parquet file")
        self.files = {split: ColumnFile(path, format, role=_option(split)) for split, path in paths.items()}
        self.splits = tuple(paths)  # type: ignore[misc]
        train_columns = self.files["train"].names
        numeric, categorical_columns = feature_columns(train_columns, self.table_tasks, features, categorical)
        target_columns = [c for task in self.table_tasks for c in task.columns]
        for source in self.files.values():
            source.require(target_columns, "the tasks")
            source.require([*numeric, *categorical_columns], "the features")
        self.categorical_encoding = categorical_encoding
        self.embedding_dim = embedding_dim
        self.transform = TableTransform(numeric, categorical_columns)
        fitted = encode(self.files["train"], self.transform, self.table_tasks, fit=True)
        self._encoded: dict[str, EncodedTable] = {"train": fitted}
        self._set_tasks()

    def _set_tasks(self) -> None:
        self.tasks = [Task(task.name, self._kind(task)) for task in self.table_tasks]
        self.input_shape = (len(self.transform.numeric) + len(self.transform.categorical),)

    def _kind(self, task: TableTask) -> TaskKind:
        state = self.transform.targets[task.name]
        if task.kind == "binary":
            return TableBinary()
        if task.kind == "multiclass":
            return TableMulticlass(num_classes=len(state.classes or ()))
        if task.kind == "regression":
            return TableRegression(scale=state.std)
        return Multilabel(num_labels=len(task.columns))

    def _load(self, split: str) -> TaskTensorDataset:
        encoded = self._encoded.pop(split, None)
        if encoded is None:
            encoded = encode(self.files[split], self.transform, self.table_tasks, fit=False)
        return TaskTensorDataset(torch.from_numpy(encoded.features), [torch.from_numpy(t) for t in encoded.targets])

    def state_dict(self) -> dict[str, Any]:
        return {"transform": self.transform.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Apply a saved transform (a checkpoint's) to every split instead of the one fitted on ``train``."""
        transform = TableTransform.from_state(state["transform"])
        ours = (self.transform.numeric, self.transform.categorical, sorted(self.transform.targets))
        if (transform.numeric, transform.categorical, sorted(transform.targets)) != ours:
            raise ProblemError(
                "table: the saved transform is for other columns: features "
                f"{transform.numeric + transform.categorical} and tasks {sorted(transform.targets)}"
            )
        self.transform = transform
        self._encoded = {}
        self._datasets = {}
        self._set_tasks()

    def model(self, name: str | None = None, **options: Any) -> MultiTaskNet:
        """The named vector model; with categorical features, behind their shared embedding or one-hot front."""
        name = name or self.default_model
        if name not in self.model_names:
            return super().model(name, **options)
        if not self.transform.categorical:
            return build_model(name, self.input_shape, self.tasks, **options)
        front = CategoricalInput(
            len(self.transform.numeric), self.transform.cardinalities, self.categorical_encoding, self.embedding_dim
        )
        return TabularNet(front, build_model(name, (front.out_features,), self.tasks, **options))


def _option(split: str) -> str:
    return {"val": "validation_file"}.get(split, f"{split}_file")
