"""The files of one run, in one place.

    config.json            the resolved TrainSpec (every default filled in; loadable as a TrainSpec)
    options.json           how it ran (RunOptions: dtype, device, checkpointing...)
    metrics_steps.jsonl    one JSON object per logged optimizer step
    metrics_epochs.jsonl   one JSON object per epoch (training means, evaluation metrics, Δm%)
    summary.json           status (SUCCEEDED, FAILED, STOPPED), final metrics, Δm%, error details
    checkpoints/           latest.pt, and epoch_NNNN.pt when asked to keep them
    plots/                 PNG figures drawn from the metrics files

Metric files are strict JSON: non-finite numbers are written as null.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

STATUS_SUCCEEDED = "SUCCEEDED"
STATUS_FAILED = "FAILED"
STATUS_STOPPED = "STOPPED"


def json_ready(value: Any) -> Any:
    """Plain JSON: non-finite floats become null, tuples lists, keys strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def dumps(value: Any) -> str:
    return json.dumps(json_ready(value), allow_nan=False)


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """Re-raise an OSError that names no file (a ``write`` failing for lack of space) with ``path``, so the run's
    error says where the disk was full."""
    try:
        yield
    except OSError as error:
        if error.filename is not None:
            raise
        raise OSError(error.errno, error.strerror or str(error), str(path)) from error


class RunDirectory:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.config = self.root / "config.json"
        self.options = self.root / "options.json"
        self.step_metrics = self.root / "metrics_steps.jsonl"
        self.epoch_metrics = self.root / "metrics_epochs.jsonl"
        self.summary = self.root / "summary.json"
        self.checkpoints = self.root / "checkpoints"
        self.latest = self.checkpoints / "latest.pt"
        self.plots = self.root / "plots"

    def epoch_checkpoint(self, epoch: int) -> Path:
        """The checkpoint written at the end of epoch ``epoch`` (1-based, as logged)."""
        return self.checkpoints / f"epoch_{epoch:04d}.pt"

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.checkpoints.mkdir(exist_ok=True)

    def write_json(self, path: Path, value: Any) -> None:
        temporary = path.with_name(path.name + ".tmp")
        with naming(temporary):
            temporary.write_text(json.dumps(json_ready(value), indent=2, allow_nan=False) + "\n")
        os.replace(temporary, path)

    def read_json(self, path: Path) -> Any:
        return json.loads(path.read_text())

    def append(self, path: Path, record: dict[str, Any]) -> None:
        with naming(path), path.open("a") as handle:
            handle.write(dumps(record) + "\n")

    def read_lines(self, path: Path) -> list[dict[str, Any]]:
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def keep_until(self, *, step: int) -> None:
        """Drop metric lines written after the checkpoint being resumed (steps past ``step``), so a resumed
        run's files read as if it had never stopped."""
        for path in (self.step_metrics, self.epoch_metrics):
            lines = [line for line in self.read_lines(path) if line["step"] <= step]
            self.write_lines(path, lines)

    def write_lines(self, path: Path, records: list[dict[str, Any]]) -> None:
        temporary = path.with_name(path.name + ".tmp")
        with naming(temporary):
            temporary.write_text("".join(dumps(record) + "\n" for record in records))
        os.replace(temporary, path)
