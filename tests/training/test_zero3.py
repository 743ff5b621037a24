"""ZeRO-3 through the trainer: a 2-process run whose ranks keep only shards of the shared parameters trains,
evaluates and checkpoints the same model as the 1-process run on the same global batches, and a zero3 run
stopped and resumed ends bit-identical to one that never stopped.

The checkpoint holds the full model (gathered on rank 0 when saving) and each rank's optimizer state for its
own shard; resuming rebuilds each rank's shard from the full model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flatmtl.workers.training import RunDirectory, RunOptions, train
from flatmtl.workers.training.checkpoint import load
from tests.training.specs import spec

pytestmark = pytest.mark.slow

METHOD = {"weighting": "uw", "aggregator": "pcgrad", "wrapper": {"name": "sam", "hparams": {"rho": 0.05}}}
OPTIONS = RunOptions(dtype="float64", plots=False)


def _zero3() -> object:
    return spec(
        method=METHOD, optimizer={"name": "adam", "lr": 0.01}, batch_size=16, processes=2, sharding="zero3", epochs=1
    )


def test_zero3_run_matches_one_process_and_resumes_bit_identically(tmp_path: Path) -> None:
    local = train(
        spec(method=METHOD, optimizer={"name": "adam", "lr": 0.01}, batch_size=32, epochs=1),
        tmp_path / "local",
        options=OPTIONS,
    )
    straight = train(_zero3(), tmp_path / "straight", options=OPTIONS)
    assert local.status == straight.status == "SUCCEEDED"
    assert straight.summary["sharding"] == "zero3" and straight.summary["steps"] == local.summary["steps"] == 6

    done = load(RunDirectory(tmp_path / "straight").latest)
    reference = load(RunDirectory(tmp_path / "local").latest)
    assert done["model"].keys() == reference["model"].keys()
    for name, value in reference["model"].items():
        torch.testing.assert_close(done["model"][name], value, rtol=0, atol=1e-9, msg=name)
    for key, value in local.summary["final"].items():
        if key.startswith("test/"):
            assert abs(straight.summary["final"][key] - value) < 1e-9, key

    interrupted = tmp_path / "interrupted"
    first = train(_zero3(), interrupted, options=RunOptions(dtype="float64", plots=False, max_steps=3))
    assert first.status == "STOPPED" and first.summary["position"] == {"epoch": 0, "batch": 3}
    second = train(_zero3(), interrupted, resume=True, options=OPTIONS)
    assert second.status == "SUCCEEDED" and second.summary["steps"] == 6

    resumed = load(RunDirectory(interrupted).latest)
    for name, value in done["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    assert len(done["optimizer"]) == 2
    for rank_done, rank_resumed in zip(done["optimizer"], resumed["optimizer"], strict=True):
        for index, state in rank_done["state"].items():
            for key, value in state.items():
                assert torch.equal(value, rank_resumed["state"][index][key]), (index, key)
    assert torch.equal(done["mtl_step"]["generator"], resumed["mtl_step"]["generator"])
