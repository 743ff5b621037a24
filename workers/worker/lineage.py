"""PBT's checkpoints: a trial's epoch-end checkpoints handed to Ray Tune, and a cloned one adopted by another trial.

Under PBT every rank 0 keeps its epoch-end checkpoint (``epoch_NNNN.pt``, written before that epoch is
reported, so the file is exactly the reported epoch's state even while the ranks train on). The trial
function moves it into a Tune checkpoint directory with the trial's index and epoch. When PBT clones a
better trial into a worse one, the worse trial restarts with the better one's Tune checkpoint and its own
perturbed config: the checkpoint becomes its run directory's ``latest.pt`` relabelled with the new spec,
which may differ from the saved one in the mutated method hyper-parameters only, and the engine's exact
resume continues from there (model, optimizer, schedule, method state, data order, random state).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from flatmtl.service.specs.sweep import set_path
from flatmtl.service.specs.train import TrainSpec
from flatmtl.workers.training import RunDirectory, checkpoint

CHECKPOINT_FILE = "checkpoint.pt"
ORIGIN_FILE = "origin.json"


class LineageError(RuntimeError):
    """A cloned checkpoint that the adopting trial cannot continue from."""


def export(run: RunDirectory, *, index: int, epoch: int, into: Path) -> bool:
    """Move the epoch's checkpoint into ``into`` (a new directory) for Tune; False when there is none."""
    source = run.epoch_checkpoint(epoch)
    if not source.exists():
        return False
    into.mkdir(parents=True)
    os.replace(source, into / CHECKPOINT_FILE)
    (into / ORIGIN_FILE).write_text(json.dumps({"trial_index": index, "epoch": epoch}))
    return True


def _without(document: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    trimmed = copy.deepcopy(document)
    for path in paths:
        set_path(trimmed, path, None)
    return trimmed


def adopt(run: RunDirectory, directory: Path, spec: TrainSpec, mutable: list[str]) -> dict[str, Any]:
    """Make the Tune checkpoint in ``directory`` this run's ``latest.pt`` under ``spec``; its origin."""
    payload = checkpoint.load(directory / CHECKPOINT_FILE)
    origin = json.loads((directory / ORIGIN_FILE).read_text())
    current = spec.model_dump(mode="json")
    if _without(payload["spec"], mutable) != _without(current, mutable):
        raise LineageError(
            f"the checkpoint of trial {origin['trial_index']} was trained with a spec that differs from this "
            f"trial's in more than the mutated fields ({', '.join(mutable)})"
        )
    payload["spec"] = current
    run.create()
    checkpoint.save(run.latest, payload)
    return origin
