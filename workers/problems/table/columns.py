"""What a table's options say about its columns: the tasks (name, column(s), kind, classes) and the features.

``tasks`` is a list of mappings ``{name, column, kind}`` (``columns`` for ``multilabel``: one 0/1 column per
label; ``classes`` optional for ``binary`` [negative, positive] and ``multiclass``). Errors name the option
path (``tasks[1].kind``), the value and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flatmtl.workers.problems.errors import ProblemError

KINDS = ("binary", "multiclass", "regression", "multilabel")
TASK_KEYS = ("name", "column", "columns", "kind", "classes")


@dataclass(frozen=True)
class TableTask:
    name: str
    kind: str
    columns: tuple[str, ...]
    classes: tuple[Any, ...] | None = None

    @property
    def column(self) -> str:
        return self.columns[0]


def _fail(path: str, value: Any, message: str) -> ProblemError:
    return ProblemError(f"table: {path} = {value!r}: {message}")


def parse_tasks(raw: Any) -> list[TableTask]:
    if not isinstance(raw, Sequence) or isinstance(raw, str) or not raw:
        raise _fail("tasks", raw, "must be a non-empty list of {name, column, kind} mappings")
    tasks = [_parse_task(f"tasks[{i}]", entry) for i, entry in enumerate(raw)]
    names = [t.name for t in tasks]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise _fail("tasks", names, f"task names must be unique; repeated: {twice}")
    return tasks


def _parse_task(path: str, entry: Any) -> TableTask:
    if not isinstance(entry, Mapping):
        raise _fail(path, entry, "must be a mapping {name, column, kind}")
    unknown = sorted(set(entry) - set(TASK_KEYS))
    if unknown:
        raise _fail(f"{path}.{unknown[0]}", entry[unknown[0]], f"unknown key; allowed: {list(TASK_KEYS)}")
    kind = entry.get("kind")
    if kind not in KINDS:
        raise _fail(f"{path}.kind", kind, f"allowed: {list(KINDS)}")
    if kind == "multilabel":
        columns = entry.get("columns")
        if not _names(columns) or "column" in entry:
            raise _fail(f"{path}.columns", columns, "a multilabel task names a list of 0/1 columns, one per label")
    else:
        column = entry.get("column")
        if not isinstance(column, str) or not column or "columns" in entry:
            raise _fail(f"{path}.column", column, f"a {kind} task names one target column")
        columns = [column]
    name = entry.get("name", columns[0] if kind != "multilabel" else None)
    if not isinstance(name, str) or not name or "/" in name:
        raise _fail(f"{path}.name", name, "a task needs a name without '/'")
    classes = entry.get("classes")
    if classes is not None:
        allowed = {"binary": 2, "multiclass": None}
        if kind not in allowed:
            raise _fail(f"{path}.classes", classes, f"classes apply to binary and multiclass tasks, not {kind}")
        listed = isinstance(classes, Sequence) and not isinstance(classes, str)
        if not listed or len(set(map(repr, classes))) != len(classes):
            raise _fail(f"{path}.classes", classes, "must be a list of distinct values")
        if kind == "binary" and len(classes) != 2:
            raise _fail(f"{path}.classes", classes, "a binary task names two classes: [negative, positive]")
        if kind == "multiclass" and len(classes) < 2:
            raise _fail(f"{path}.classes", classes, "a multiclass task needs at least two classes")
        classes = tuple(classes)
    return TableTask(name, kind, tuple(columns), classes)


def _names(value: Any) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) > 0
        and all(isinstance(v, str) and v for v in value)
    )


def feature_columns(
    available: Sequence[str], tasks: Sequence[TableTask], features: Any, categorical: Any
) -> tuple[list[str], list[str]]:
    """(numeric, categorical) feature columns: ``features`` or, when None, every column that is no target;
    categorical ones are those listed in ``categorical``, in the file's order."""
    targets = {c for task in tasks for c in task.columns}
    if categorical is None:
        categorical = []
    if (
        not isinstance(categorical, Sequence)
        or isinstance(categorical, str)
        or not all(isinstance(c, str) for c in categorical)
    ):
        raise _fail("categorical", categorical, "must be a list of column names")
    if features is None:
        chosen = [c for c in available if c not in targets]
    elif _names(features):
        chosen = list(features)
    else:
        raise _fail("features", features, "must be a non-empty list of column names, or null for all but the targets")
    overlap = sorted(targets & set(chosen))
    if overlap:
        raise _fail("features", features, f"target column(s) {overlap} cannot also be features")
    stray = [c for c in categorical if c not in chosen and c in available]
    if features is not None and stray:
        raise _fail("categorical", categorical, f"column(s) {stray} are not among the features")
    if not chosen:
        raise _fail("features", features, "no feature column left once the targets are taken out")
    wanted = set(categorical)
    return [c for c in chosen if c not in wanted], [c for c in chosen if c in wanted]
