"""Trains every run the claims ask for, once each, spread over worker processes, and reads them back.

A run is identified by its spec without the display name, so claims that need the same training share
it. Run directories persist under the runs folder: a finished run whose config matches is reused, an
interrupted one resumes from its checkpoint, so an interrupted report continues where it stopped. A run
that fails (a diverging optimizer gives NaN losses) is a result: it is recorded as FAILED and reported.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import multiprocessing
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from flatmtl.workers.reproduce.sweeps import SweepOutcome, SweepRequest

WRAPPER_COST = {"none": 1.0, "g_sam": 1.5, "fmtl": 2.3, "samo": 2.7}
"""Rough step cost relative to the plain step, used only to start the longest runs first."""


@functools.cache
def _catalog() -> Any:
    from flatmtl.service.catalog import load_catalog

    return load_catalog()


def _without_defaults(model: type[BaseModel], document: dict[str, Any]) -> dict[str, Any]:
    """``document`` less every field (of ``model``, recursively) that holds its default: a field added to the spec
    later, at its default, trains the same run and must not change the run's key."""
    kept = {}
    for key, value in document.items():
        field = model.model_fields.get(key)
        if field is None or field.is_required():
            kept[key] = value
            continue
        default = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json")
        if value == json.loads(json.dumps(default)):
            continue
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and isinstance(value, dict):
            value = _without_defaults(annotation, value)
            if not value:  # an older version of the model, at its defaults
                continue
        kept[key] = value
    return kept


def _digest(resolved: dict[str, Any]) -> str:
    """Hash of a resolved spec without its name: method defaults written out (specs keep them implicit; the
    catalog's defaults may change), every other field at its default left out."""
    from flatmtl.service.specs.train import TrainSpec

    catalog = _catalog()
    document = _without_defaults(TrainSpec, {k: v for k, v in resolved.items() if k not in ("name", "method")})
    document["method"] = {
        kind: {
            "name": choice["name"],
            "hparams": {
                **{hp.name: hp.default for hp in catalog.method(kind, choice["name"]).hparams},  # type: ignore[arg-type]
                **choice["hparams"],
            },
        }
        for kind, choice in resolved["method"].items()
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:10]


@functools.cache
def _resolved_key(text: str) -> str:
    from flatmtl.workers.training.config import parse_spec

    return _digest(parse_spec(json.loads(text)).model_dump(mode="json"))


def run_key(spec: dict[str, Any]) -> str:
    """A short hash of the resolved spec (every default and hyper-parameter filled in) without its display
    name: trainings that are the same get the same key however their specs were written."""
    return _resolved_key(json.dumps(spec, sort_keys=True))


@dataclass(frozen=True)
class RunRequest:
    spec: dict[str, Any]
    keep_epoch_checkpoints: bool = False

    @property
    def key(self) -> str:
        return run_key(self.spec)

    @property
    def directory_name(self) -> str:
        return f"{self.spec['name']}-{self.key}"

    def estimated_cost(self) -> float:
        wrapper = self.spec["method"]["wrapper"]["name"]
        return WRAPPER_COST.get(wrapper, 2.0) * self.spec["epochs"] * self.spec["problem_options"]["train_size"]


@dataclass(frozen=True)
class RunRecord:
    """A finished run: its spec, status, per-epoch records and per-step metrics."""

    key: str
    directory: Path
    spec: dict[str, Any]
    status: str
    epochs: list[dict[str, Any]]
    steps: list[dict[str, Any]]
    wall_seconds: float

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"

    @property
    def final(self) -> dict[str, Any]:
        return self.epochs[-1] if self.epochs else {}

    def metric(self, name: str) -> float:
        """A final test metric (``task/metric``); NaN for a failed run, so divergence shows in every table."""
        if not self.succeeded:
            return math.nan
        value = self.final.get(f"test/{name}")
        return math.nan if value is None else float(value)

    def series(self, name: str) -> list[float]:
        """A per-step metric in step order (NaN where a step did not log it)."""
        return [math.nan if s.get(name) is None else float(s[name]) for s in self.steps]


def merge(requests: Iterable[RunRequest]) -> list[RunRequest]:
    """One request per key; a run keeps its epoch checkpoints if any claim asked for them."""
    merged: dict[str, RunRequest] = {}
    for request in requests:
        seen = merged.get(request.key)
        if seen is None or (request.keep_epoch_checkpoints and not seen.keep_epoch_checkpoints):
            keep = request.keep_epoch_checkpoints or (seen is not None and seen.keep_epoch_checkpoints)
            merged[request.key] = RunRequest(seen.spec if seen else request.spec, keep)
    return list(merged.values())


def _matches(directory: Path, spec: dict[str, Any]) -> bool:
    """The folder holds a run of exactly this spec. Its config.json is already resolved and is compared as
    written: a dumped SGD spec carries Adam's default betas and would not validate again."""
    config = directory / "config.json"
    return config.exists() and _digest(json.loads(config.read_text())) == run_key(spec)


def _status(directory: Path) -> str | None:
    summary = directory / "summary.json"
    return json.loads(summary.read_text())["status"] if summary.exists() else None


def adopt(runs_dir: Path, requests: Sequence[RunRequest]) -> int:
    """Give a run folder of an earlier key definition its current name when its config is the request's, so it is
    reused instead of trained again; how many were renamed. Done before the workers start, one at a time."""
    adopted = 0
    for request in requests:
        target = runs_dir / request.directory_name
        if target.exists():
            continue
        for candidate in sorted(runs_dir.glob(f"{request.spec['name']}-*")):
            if candidate.is_dir() and _matches(candidate, request.spec):
                candidate.rename(target)
                adopted += 1
                break
    return adopted


def execute_one(
    spec: dict[str, Any], directory: str, keep_epoch_checkpoints: bool, eval_batch_size: int
) -> tuple[str, bool]:
    """Train one run in this process (one torch thread); returns its final status and whether a finished run was
    reused instead. Module level for spawn."""
    import torch

    from flatmtl.workers.training import RunOptions, train
    from flatmtl.workers.training.errors import TrainingFailedError

    torch.set_num_threads(1)
    path = Path(directory)
    if path.exists() and not _matches(path, spec):
        shutil.rmtree(path)
    status = _status(path) if path.exists() else None
    if status in ("SUCCEEDED", "FAILED"):
        return status, True
    options = RunOptions(
        device="cpu",
        threads=1,
        plots=False,
        keep_epoch_checkpoints=keep_epoch_checkpoints,
        eval_batch_size=eval_batch_size,
    )
    try:
        return train(spec, path, resume=True, options=options).status, False
    except TrainingFailedError:
        return "FAILED", False


def execute(
    requests: Sequence[RunRequest],
    runs_dir: Path,
    *,
    workers: int,
    eval_batch_size: int,
    echo: Callable[[str], None] = print,
) -> tuple[dict[str, RunRecord], int]:
    """Run every request (longest first); the records by key, and how many were reused from earlier runs."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    ordered = sorted(merge(requests), key=lambda r: -r.estimated_cost())
    adopted = adopt(runs_dir, ordered)
    if adopted:
        echo(f"{adopted} run folder(s) renamed to the current key of their unchanged config")
    started = time.perf_counter()

    reused = 0

    def report(done: int, request: RunRequest, outcome: tuple[str, bool]) -> None:
        nonlocal reused
        status, was_reused = outcome
        reused += was_reused
        elapsed = time.perf_counter() - started
        shown = f"{status} (reused)" if was_reused else status
        echo(f"[{done}/{len(ordered)}] {shown:<9} {request.directory_name} ({elapsed:.0f}s)")

    arguments = [
        (request.spec, str(runs_dir / request.directory_name), request.keep_epoch_checkpoints, eval_batch_size)
        for request in ordered
    ]
    if workers <= 1:
        for done, (request, args) in enumerate(zip(ordered, arguments, strict=True), start=1):
            report(done, request, execute_one(*args))
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = {
                pool.submit(execute_one, *args): request for request, args in zip(ordered, arguments, strict=True)
            }
            for done, future in enumerate(as_completed(futures), start=1):
                report(done, futures[future], future.result())
    return {request.key: load(runs_dir / request.directory_name, request.key) for request in ordered}, reused


def load(directory: Path, key: str) -> RunRecord:
    from flatmtl.workers.training.rundir import RunDirectory

    run = RunDirectory(directory)
    summary = run.read_json(run.summary)
    return RunRecord(
        key=key,
        directory=directory,
        spec=run.read_json(run.config),
        status=summary["status"],
        epochs=run.read_lines(run.epoch_metrics),
        steps=run.read_lines(run.step_metrics),
        wall_seconds=float(summary.get("wall_seconds") or 0.0),
    )


class Results:
    """The records (and sweep outcomes) of one report, looked up by the spec or sweep request that asked for them."""

    def __init__(self, records: dict[str, RunRecord], sweeps: dict[str, SweepOutcome] | None = None) -> None:
        self.records = records
        self.sweeps = sweeps or {}

    def sweep(self, request: SweepRequest) -> SweepOutcome:
        return self.sweeps[request.key]

    def __getitem__(self, spec: dict[str, Any]) -> RunRecord:
        return self.records[run_key(spec)]

    def seeds(self, specs: Sequence[dict[str, Any]]) -> list[RunRecord]:
        return [self[spec] for spec in specs]
