"""DeepSpeed ZeRO stages 1-3 as the sharding backend, through the trainer with 2 real gloo ranks.

Each stage trains the same model as one process on the concatenated batches (the engine reduces the per-task
gradients before aggregation; DeepSpeed only owns the partitions and applies the update). SGD with momentum,
which unlike Adam is not invariant to the update's scale, so a rank-sum in place of DeepSpeed's rank-mean
would show. A stage-3 run stopped and resumed ends bit-identical to one that never stopped (with UW, whose learnable
log-scales DeepSpeed partitions too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from flatmtl.workers.training import RunDirectory, RunOptions, train
from flatmtl.workers.training.checkpoint import load
from tests.training.specs import spec

pytestmark = pytest.mark.slow

OPTIONS = RunOptions(dtype="float32", plots=False)
SGD = {"name": "sgd", "lr": 0.1, "momentum": 0.9}
CASES = {
    "zero1": {"weighting": "ew", "aggregator": "mgda", "wrapper": {"name": "fmtl", "hparams": {}}},
    "zero2": {"weighting": "rlw", "aggregator": "cagrad", "wrapper": {"name": "samo", "hparams": {}}},
    "zero3": {"weighting": "uw", "aggregator": "pcgrad", "wrapper": {"name": "sam", "hparams": {}}},
}


def _deepspeed(sharding: str, **overrides: Any) -> object:
    return spec(
        method=CASES[sharding],
        optimizer=SGD,
        batch_size=16,
        epochs=1,
        processes=2,
        sharding=sharding,
        sharding_backend="deepspeed",
        **overrides,
    )


def _model(run_dir: Path) -> dict[str, torch.Tensor]:
    return load(RunDirectory(run_dir).latest)["model"]


@pytest.mark.parametrize("sharding", sorted(CASES))
def test_deepspeed_stage_trains_the_one_process_model(tmp_path: Path, sharding: str) -> None:
    local = train(
        spec(method=CASES[sharding], optimizer=SGD, batch_size=32, epochs=1), tmp_path / "local", options=OPTIONS
    )
    sharded = train(_deepspeed(sharding), tmp_path / "deepspeed", options=OPTIONS)
    assert local.status == sharded.status == "SUCCEEDED"
    assert sharded.summary["steps"] == local.summary["steps"] == 6

    reference, trained = _model(tmp_path / "local"), _model(tmp_path / "deepspeed")
    for name, value in reference.items():
        torch.testing.assert_close(trained[name], value, rtol=0, atol=1e-5, msg=name)
    for key, value in local.summary["final"].items():
        if key.startswith("test/") and "loss" in key:
            assert abs(sharded.summary["final"][key] - value) < 1e-4, key


def test_deepspeed_zero3_resumes_bit_identically(tmp_path: Path) -> None:
    straight = train(_deepspeed("zero3"), tmp_path / "straight", options=OPTIONS)
    interrupted = tmp_path / "interrupted"
    first = train(_deepspeed("zero3"), interrupted, options=RunOptions(dtype="float32", plots=False, max_steps=3))
    assert first.status == "STOPPED" and first.summary["position"] == {"epoch": 0, "batch": 3}
    second = train(_deepspeed("zero3"), interrupted, resume=True, options=OPTIONS)
    assert straight.status == second.status == "SUCCEEDED" and second.summary["steps"] == 6

    done, resumed = load(RunDirectory(tmp_path / "straight").latest), load(RunDirectory(interrupted).latest)
    for name, value in done["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    for saved in (done, resumed):  # whole, though DeepSpeed keeps only a partition of them between steps
        assert saved["mtl_step"]["weighting"]["log_scales"].shape == (2,)
        assert torch.equal(saved["mtl_step"]["weighting"]["log_scales"], saved["weighting_parameters"][0])
    assert torch.equal(done["weighting_parameters"][0], resumed["weighting_parameters"][0])
    assert not torch.equal(done["weighting_parameters"][0], torch.zeros(2)), "UW's log-scales never moved"
    assert len(done["optimizer"]) == 2 and done["optimizer"][0]["state"], "no momentum state was checkpointed"
    for rank_done, rank_resumed in zip(done["optimizer"], resumed["optimizer"], strict=True):
        for index, state in rank_done["state"].items():
            for key, value in state.items():
                assert torch.equal(value, rank_resumed["state"][index][key]), (index, key)


def test_deepspeed_engine_is_built_on_the_parameters_one_device() -> None:
    """The engine is placed on the parameters' device (not DeepSpeed's ``cuda:LOCAL_RANK`` default); parameters
    split over devices are refused before DeepSpeed moves any of them (``meta`` stands in for a second device)."""
    from flatmtl.workers.engine.deepspeed_zero import parameters_device

    here = torch.nn.Parameter(torch.zeros(2))
    assert parameters_device([here, torch.nn.Parameter(torch.ones(3))]) == torch.device("cpu")
    with pytest.raises(ValueError, match=r"\['cpu', 'meta'\]; allowed: one device"):
        parameters_device([here, torch.nn.Parameter(torch.zeros(2, device="meta"))])
