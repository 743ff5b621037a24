"""The ``table`` problem's loader on a synthetic table: 1,000,000 rows x 100 features (20 categorical) x 8 tasks.

Load: the time and peak memory of building the problem's training split from the file (read, standardise, code
the categories, encode the targets into one float32 matrix and one array per task) against pyarrow's own read
of the same file (``pyarrow.parquet.read_table`` / ``pyarrow.csv.read_csv``), each in a fresh process after the
same imports, in turn, median of the rounds. Peak memory is the process's high-water mark above its resident size
before the read. Training: an EW step of an MLP with batches from the table's dataset against the same step with
batches cut from plain tensors already in memory (same values), timed in turn; median ratio of throughputs.

    python benchmarks/table_loader.py [--rows 1000000] [--formats parquet,csv] [--rounds 3] [--steps 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

NUMERIC, CATEGORICAL = 80, 20
TASKS: list[dict[str, Any]] = [
    {"name": "click", "column": "click", "kind": "binary"},
    {"name": "buy", "column": "buy", "kind": "binary"},
    {"name": "churn", "column": "churn", "kind": "binary"},
    {"name": "return", "column": "return", "kind": "binary"},
    {"name": "value", "column": "value", "kind": "regression"},
    {"name": "days", "column": "days", "kind": "regression"},
    {"name": "segment", "column": "segment", "kind": "multiclass"},
    {"name": "interests", "columns": ["likes_a", "likes_b", "likes_c"], "kind": "multilabel"},
]


def make_table(rows: int, seed: int = 0) -> Any:
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    columns: dict[str, Any] = {f"num_{i}": rng.normal(size=rows) for i in range(NUMERIC)}
    for i in range(CATEGORICAL):
        cardinality = 10 ** (1 + i % 3)
        codes = rng.integers(0, cardinality, size=rows)
        columns[f"cat_{i}"] = pa.DictionaryArray.from_arrays(codes, pa.array([f"c{j}" for j in range(cardinality)]))
    score = columns["num_0"] + columns["num_1"]
    for name in ("click", "buy", "churn"):
        columns[name] = (score + rng.normal(size=rows) > 0).astype(np.int64)
    missing = rng.random(rows) < 0.3
    columns["return"] = pa.array((score > 0.5).astype(np.float64), mask=missing)
    columns["value"] = 3 * score + rng.normal(size=rows)
    columns["days"] = pa.array(np.abs(score) * 10, mask=rng.random(rows) < 0.1)
    columns["segment"] = np.digitize(score, [-1.0, 0.0, 1.0])
    for name in ("likes_a", "likes_b", "likes_c"):
        columns[name] = (rng.random(rows) < 0.3).astype(np.int64)
    return pa.table(columns)


def write_files(folder: Path, rows: int, formats: list[str]) -> dict[str, dict[str, str]]:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    train, test = make_table(rows, 0), make_table(1000, 1)
    paths: dict[str, dict[str, str]] = {}
    for file_format in formats:
        paths[file_format] = {}
        for split, table in (("train", train), ("test", test)):
            path = folder / f"{split}.{file_format}"
            if file_format == "parquet":
                pq.write_table(table, path)
            else:
                pacsv.write_csv(table.cast(_plain_schema(table)), path)
            paths[file_format][split] = str(path)
    return paths


def _plain_schema(table: Any) -> Any:
    import pyarrow as pa

    return pa.schema(
        [pa.field(f.name, pa.string() if pa.types.is_dictionary(f.type) else f.type) for f in table.schema]
    )


def options(paths: dict[str, str]) -> dict[str, Any]:
    return {
        "train_file": paths["train"],
        "test_file": paths["test"],
        "tasks": TASKS,
        "categorical": [f"cat_{i}" for i in range(CATEGORICAL)],
    }


def _memory_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(what: str, file_format: str, paths: dict[str, str]) -> dict[str, float]:
    """One measurement in this (fresh) process, after the imports both sides share."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from flatmtl.workers import problems

    before = _memory_kib("VmRSS")
    started = time.perf_counter()
    if what == "pyarrow":
        table = pq.read_table(paths["train"]) if file_format == "parquet" else pacsv.read_csv(paths["train"])
        rows = table.num_rows
    else:
        problem = problems.build("table", **options(paths))
        rows = len(problem.dataset("train"))  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_mib": (_memory_kib("VmHWM") - before) / 1024, "rows": rows}


def measure_load(file_format: str, paths: dict[str, str], rounds: int) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {"pyarrow": [], "table": []}
    for _ in range(rounds):
        for what in results:
            command = [sys.executable, __file__, "--child", what, "--format", file_format, "--paths", json.dumps(paths)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[what].append(json.loads(output.strip().splitlines()[-1]))
    return results


def measure_steps(paths: dict[str, str], rounds: int, steps: int, batch: int) -> list[float]:
    """Per round: samples/s from the table's dataset over samples/s from plain in-memory tensors."""
    import torch

    from flatmtl.workers import mtl, problems
    from flatmtl.workers.training.data import BatchPlan, collate

    torch.set_num_threads(1)
    problem = problems.build("table", **options(paths))
    data = problem.dataset("train")
    plain_inputs = data.inputs.clone()  # type: ignore[attr-defined]
    plain_targets = [t.clone() for t in data.targets]  # type: ignore[attr-defined]
    torch.manual_seed(0)
    model = problem.model("mlp", hidden=(256, 128))
    step = mtl.MTLStep.from_model(model, weighting="ew", aggregator="mean", seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    plan = BatchPlan(len(data), batch, seed=0)  # type: ignore[arg-type]

    def run(from_table: bool, epoch: int) -> float:
        started = time.perf_counter()
        for index, (_, rows) in enumerate(plan.batches(epoch)):
            if index == steps:
                break
            if from_table:
                inputs, targets = collate(data, rows)
            else:
                picked = torch.from_numpy(rows)
                inputs, targets = plain_inputs[picked], [t[picked] for t in plain_targets]
            step(lambda inputs=inputs, targets=targets: problem.losses(model(inputs), targets))
            optimizer.step()
            optimizer.zero_grad()
        return steps * batch / (time.perf_counter() - started)

    run(True, 0)
    run(False, 0)  # warm-up
    ratios = []
    for r in range(rounds):  # each side first in every other round, so a drifting machine load favours neither
        if r % 2:
            plain, table = run(False, r + 1), run(True, r + 1)
        else:
            table, plain = run(True, r + 1), run(False, r + 1)
        ratios.append(table / plain)
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--formats", default="parquet,csv")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--child", choices=["pyarrow", "table"], help=argparse.SUPPRESS)
    parser.add_argument("--format", help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.format, json.loads(args.paths))))
        return
    formats = args.formats.split(",")
    with tempfile.TemporaryDirectory(prefix="table_loader_") as folder:
        started = time.perf_counter()
        paths = write_files(Path(folder), args.rows, formats)
        sizes = {f: Path(p["train"]).stat().st_size / 2**20 for f, p in paths.items()}
        features = f"{NUMERIC + CATEGORICAL} features ({CATEGORICAL} categorical)"
        shape = f"{args.rows:,} rows x {features} x {len(TASKS)} tasks"
        print(f"{shape}; "
              f"files written in {time.perf_counter() - started:.0f} s: "
              + ", ".join(f"{f} {mib:.0f} MiB" for f, mib in sizes.items()))  # fmt: skip
        for file_format in formats:
            load = measure_load(file_format, paths[file_format], args.rounds)
            time_ratio = statistics.median(
                t["seconds"] / p["seconds"] for t, p in zip(load["table"], load["pyarrow"], strict=True)
            )
            memory_ratio = statistics.median(
                t["peak_mib"] / p["peak_mib"] for t, p in zip(load["table"], load["pyarrow"], strict=True)
            )
            for what, runs in load.items():
                print(f"{file_format} {what:8s} load: median {statistics.median(r['seconds'] for r in runs):.2f} s, "
                      f"peak +{statistics.median(r['peak_mib'] for r in runs):.0f} MiB")  # fmt: skip
            print(f"{file_format} table / pyarrow: time {time_ratio:.2f}x (target <= 1.3), "
                  f"peak memory {memory_ratio:.2f}x (target <= 1.5)")  # fmt: skip
        ratios = measure_steps(paths[formats[0]], args.rounds, args.steps, args.batch)
        print(f"EW MLP step throughput, table dataset / in-memory tensors (batch {args.batch}, {args.steps} steps): "
              f"median {statistics.median(ratios):.2f}x over {args.rounds} rounds (target >= 0.9)")  # fmt: skip


if __name__ == "__main__":
    main()
