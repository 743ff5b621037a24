"""Table files for the ``table`` problem's tests: Yeast split exactly as the built-in ``yeast`` problem splits it,
and a small synthetic table with every task kind, categorical features and missing labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

YEAST_TEST_SIZE = 917


def write(table: pa.Table, path: Path) -> Path:
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    else:
        pacsv.write_csv(table, path)
    return path


def yeast_tables(folder: Path, suffix: str, seed: int = 0) -> dict[str, Any]:
    """Yeast's train and test rows (the built-in problem's seeded split) as two files; the ``table`` options."""
    from flatmtl.workers.problems.yeast import NUM_FEATURES, load_yeast

    features, labels, names = load_yeast()
    order = np.random.default_rng([seed, 0]).permutation(len(features))
    splits = {"test": order[:YEAST_TEST_SIZE], "train": order[YEAST_TEST_SIZE:]}
    label_names = [name.lower() for name in names]
    options: dict[str, Any] = {
        "tasks": [{"name": name, "column": name, "kind": "binary"} for name in label_names],
        "seed": seed,
    }
    for split, rows in splits.items():
        columns = {f"feature_{i}": features[rows, i] for i in range(NUM_FEATURES)}
        columns.update({name: labels[rows, j].astype(np.int64) for j, name in enumerate(label_names)})
        options[f"{split}_file"] = str(write(pa.table(columns), folder / f"yeast_{split}{suffix}"))
    return options


def mixed_columns(rows: int, seed: int) -> dict[str, Any]:
    """Two numeric features, a categorical one, and a binary (string classes), multiclass, regression and
    2-label multilabel target that depend on them; every fifth row lacks the regression label, every
    seventh the binary one."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=rows) * 10 + 50, rng.normal(size=rows)
    city = rng.choice(["paris", "oslo", "rome"], size=rows)
    shift = np.select([city == "paris", city == "oslo"], [1.0, -1.0], 0.0)
    score = (x1 - 50) / 10 + x2 + shift
    clicked = np.where(score > 0, "yes", "no").astype(object)
    clicked[::7] = None
    price = 3 * score + rng.normal(size=rows) * 0.1 + 100
    price_column = [None if i % 5 == 0 else float(v) for i, v in enumerate(price)]
    segment = np.digitize(score, [-1.0, 1.0])
    return {
        "x1": x1,
        "x2": x2,
        "city": city,
        "clicked": list(clicked),
        "segment": segment,
        "price": price_column,
        "tag_a": (x2 > 0).astype(np.int64),
        "tag_b": (shift > 0).astype(np.int64),
    }


MIXED_TASKS = [
    {"name": "clicked", "column": "clicked", "kind": "binary", "classes": ["no", "yes"]},
    {"name": "segment", "column": "segment", "kind": "multiclass"},
    {"name": "price", "column": "price", "kind": "regression"},
    {"name": "tags", "columns": ["tag_a", "tag_b"], "kind": "multilabel"},
]


def mixed_tables(folder: Path, suffix: str = ".csv", train_rows: int = 400, test_rows: int = 200) -> dict[str, Any]:
    options: dict[str, Any] = {"tasks": MIXED_TASKS, "categorical": ["city"]}
    for split, rows, seed in (("train", train_rows, 1), ("test", test_rows, 2)):
        options[f"{split}_file"] = str(write(pa.table(mixed_columns(rows, seed)), folder / f"mixed_{split}{suffix}"))
    return options
