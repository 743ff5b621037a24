"""PBT's checkpoints: a trial's epoch checkpoints handed to Ray Tune by reference, and a cloned one adopted by
another trial.

Every epoch a trial trains is already a Ray Train checkpoint in the job's storage (its run directory as of
that epoch's end). Under PBT the trial reports to Tune a small directory naming it (``origin.json``: the
trial's index, the epoch and the checkpoint's storage path), so Tune copies a few bytes, not the model, and
Ray Train keeps every epoch's checkpoint for clones to find. When PBT clones a better trial into a worse one,
the worse trial starts a new Train run from the named checkpoint with its own perturbed config: every rank
copies it and relabels its ``latest.pt`` with the new spec, which may differ from the saved one in the
mutated method hyper-parameters only, and the engine's exact resume continues from there (model, optimizer,
schedule, method state, data order, random state).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from flatmtl.service.specs.sweep import set_path
from flatmtl.service.specs.train import TrainSpec
from flatmtl.workers.training import RunDirectory, checkpoint

ORIGIN_FILE = "origin.json"


class LineageError(RuntimeError):
    """A cloned checkpoint that the adopting trial cannot continue from."""


def export(into: Path, *, index: int, epoch: int, path: str) -> None:
    """Write the reference to trial ``index``'s checkpoint of ``epoch`` at storage ``path`` into ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    (into / ORIGIN_FILE).write_text(json.dumps({"trial_index": index, "epoch": epoch, "path": path}))


def origin(directory: Path) -> dict[str, Any]:
    """What a Tune checkpoint written by :func:`export` names."""
    return json.loads((directory / ORIGIN_FILE).read_text())


def _without(document: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    trimmed = copy.deepcopy(document)
    for path in paths:
        set_path(trimmed, path, None)
    return trimmed


def relabel(run: RunDirectory, spec: TrainSpec, mutable: list[str]) -> None:
    """Make the adopted ``latest.pt`` in ``run`` this trial's: its spec becomes ``spec``, which may differ from the
    one it was trained with in the ``mutable`` fields only."""
    payload = checkpoint.load(run.latest)
    current = spec.model_dump(mode="json")
    if _without(payload["spec"], mutable) != _without(current, mutable):
        raise LineageError(
            "the cloned checkpoint was trained with a spec that differs from this trial's in more than the "
            f"mutated fields ({', '.join(mutable)})"
        )
    payload["spec"] = current
    checkpoint.save(run.latest, payload)
