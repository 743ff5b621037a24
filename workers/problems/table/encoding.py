"""The table's transform, fitted on the training file only and applied to every split: numeric features
standardised (training mean and standard deviation; a missing value becomes the mean, 0), categorical features
coded against the training vocabulary (0: missing or unseen), targets as float32 with NaN where unknown
(class indices for binary and multiclass, standardised values for regression).

``TableTransform.state_dict()`` is plain lists and numbers, so a checkpoint carries it and evaluation of
another file later applies exactly the training split's transform.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from flatmtl.workers.problems.errors import ProblemError
from flatmtl.workers.problems.table.columns import TableTask
from flatmtl.workers.problems.table.reader import ColumnFile, as_float, located, pa, pc


@dataclass
class TargetTransform:
    classes: list[Any] | None = None
    mean: float = 0.0
    std: float = 1.0


@dataclass
class TableTransform:
    numeric: list[str]
    categorical: list[str]
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    vocabularies: list[list[str]] = field(default_factory=list)
    targets: dict[str, TargetTransform] = field(default_factory=dict)

    @property
    def cardinalities(self) -> list[int]:
        """Codes per categorical feature: the training vocabulary plus 0 for missing or unseen values."""
        return [len(vocabulary) + 1 for vocabulary in self.vocabularies]

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TableTransform:
        targets = {name: TargetTransform(**value) for name, value in state["targets"].items()}
        return cls(**{**state, "targets": targets})


@dataclass
class EncodedTable:
    features: np.ndarray
    """[N, F] float32: the standardised numeric features, then the categorical codes."""
    targets: list[np.ndarray]
    """One float32 array per task, [N] or [N, L] for multilabel; NaN where the label is unknown."""


def encode(source: ColumnFile, transform: TableTransform, tasks: list[TableTask], *, fit: bool) -> EncodedTable:
    """Encode ``source`` (fitting ``transform`` on it first when ``fit``: the training file), column by column."""
    target_columns = [c for task in tasks for c in task.columns]
    source.load([*transform.numeric, *transform.categorical, *target_columns], transform.categorical)
    rows = source.num_rows
    if rows == 0:
        raise ProblemError(f"table: the {source.role} file {source.path} has no rows")
    width = len(transform.numeric) + len(transform.categorical)
    # Filled feature by feature, each a contiguous row of this [F, N] array, then transposed once into the
    # [N, F] matrix batches gather rows from: writing columns of [N, F] directly touches every row per feature.
    by_feature = np.empty((width, rows), dtype=np.float32)
    for index, column in enumerate(transform.numeric):
        values = _float_values(source, column, "numeric features are numbers (list the column in categorical?)")
        if fit:
            mean, std = _moments(values)
            transform.mean.append(mean)
            transform.std.append(std)
        standardised = (values - transform.mean[index]) / transform.std[index]
        by_feature[index] = np.nan_to_num(standardised, nan=0.0, copy=False)
    offset = len(transform.numeric)
    for index, column in enumerate(transform.categorical):
        values = _dictionary(source.take(column))
        if fit:
            transform.vocabularies.append(_vocabulary(values))
        vocabulary = pa.array(transform.vocabularies[index], type=pa.string())
        start = 0
        for chunk in values.chunks:
            # each distinct value is looked up once; the rows only gather the looked-up codes
            known = pc.index_in(chunk.dictionary, value_set=vocabulary)
            codes = pc.fill_null(pc.take(known, chunk.indices), -1).to_numpy(zero_copy_only=False)
            by_feature[offset + index, start : start + len(chunk)] = codes.astype(np.float32) + 1
            start += len(chunk)
    targets = [_target(source, task, transform, fit=fit) for task in tasks]
    source.release()
    features = torch.from_numpy(by_feature).t().contiguous().numpy()
    return EncodedTable(features, targets)


def _dictionary(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """A categorical column as dictionary chunks of strings (a CSV reader hands them over as such already)."""
    string_dictionary = pa.dictionary(pa.int32(), pa.string())
    if not pa.types.is_dictionary(values.type):
        values = pc.dictionary_encode(pc.cast(values, pa.string()))
    elif values.type.value_type != pa.string():
        values = pc.cast(values, string_dictionary)
    # one dictionary for all chunks, so each distinct value is looked up once for the whole column
    return pa.chunked_array([values.combine_chunks()]) if values.num_chunks > 1 else values


def _vocabulary(values: pa.ChunkedArray) -> list[str]:
    """The sorted distinct values the rows use (a dictionary may hold more)."""
    seen: set[str] = set()
    for chunk in values.chunks:
        used = pc.unique(chunk.indices).drop_null()
        seen.update(chunk.dictionary.take(used).to_pylist())
    return sorted(seen)


def _float_values(source: ColumnFile, column: str, needs: str) -> np.ndarray:
    return as_float(source.take(column), source.path, column, needs).to_numpy()


def _moments(values: np.ndarray) -> tuple[float, float]:
    """Mean and (population) standard deviation of the known values; a constant column keeps scale 1."""
    known = values if not np.isnan(values).any() else values[~np.isnan(values)]
    if known.size == 0:
        return 0.0, 1.0
    mean, std = float(known.mean()), float(known.std())
    return mean, std if std > 0 else 1.0


def _target(source: ColumnFile, task: TableTask, transform: TableTransform, *, fit: bool) -> np.ndarray:
    if fit:
        transform.targets[task.name] = TargetTransform()
    state = transform.targets[task.name]
    if task.kind == "multilabel":
        labels = [_zero_one(source, task, column) for column in task.columns]
        encoded = np.stack(labels, axis=1)
    elif task.kind == "regression":
        values = _float_values(source, task.column, f"task {task.name!r} is a regression")
        if fit:
            state.mean, state.std = _moments(values)
        encoded = ((values - state.mean) / state.std).astype(np.float32)
    elif task.kind == "binary" and task.classes is None:
        encoded = _zero_one(source, task, task.column)
    else:
        encoded = _class_indices(source, task, state, fit=fit)
    known = ~np.isnan(encoded) if encoded.ndim == 1 else ~np.isnan(encoded).all(axis=1)
    if not known.any():
        columns = ", ".join(task.columns)
        raise ProblemError(
            f"table: task {task.name!r} has no labelled row in the {source.role} file {source.path} "
            f"(column {columns} is empty in all {len(known)} rows)"
        )
    return encoded


def _zero_one(source: ColumnFile, task: TableTask, column: str) -> np.ndarray:
    needs = f"task {task.name!r} ({task.kind}) takes 0/1 labels, or classes: [negative, positive]"
    values = _float_values(source, column, needs)
    bad = np.flatnonzero(~np.isnan(values) & (values != 0) & (values != 1))
    if bad.size:
        raise located(source.path, column, int(bad[0]), f"{values[bad[0]]!r} is not a label; {needs}")
    return values.astype(np.float32)


def _class_indices(source: ColumnFile, task: TableTask, state: TargetTransform, *, fit: bool) -> np.ndarray:
    values = source.take(task.column)
    if values.null_count == len(values):
        return np.full(len(values), np.nan, dtype=np.float32)
    if fit:
        if task.classes is not None:
            state.classes = list(task.classes)
        else:
            unique = pc.unique(values).drop_null()
            state.classes = unique.take(pc.sort_indices(unique)).to_pylist()
            if len(state.classes) < 2:
                raise ProblemError(
                    f"table: task {task.name!r}: column {task.column!r} of {source.path} holds "
                    f"{len(state.classes)} distinct value(s) {state.classes}; a classification task needs two or more"
                )
    classes = state.classes or []
    try:
        value_set = pa.array(classes).cast(values.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        raise ProblemError(
            f"table: task {task.name!r}: classes {classes} do not match column {task.column!r} of {source.path}, "
            f"which holds {values.type}"
        ) from None
    indices = pc.index_in(values, value_set=value_set)
    outside = pc.and_(pc.is_valid(values), pc.is_null(indices))
    if pc.any(outside).as_py():
        row = pc.index(outside, True).as_py()
        raise located(
            source.path,
            task.column,
            row,
            f"{values[row].as_py()!r} is not one of the classes {classes} of task "
            f"{task.name!r}" + (" (the classes seen in the training file)" if task.classes is None else ""),
        )
    return indices.to_numpy(zero_copy_only=False).astype(np.float32)
