"""A run stopped mid-epoch and resumed ends bit-identical (CPU) to one that never stopped.

The method has state in every place a checkpoint must carry: UW's learnable log-scales (in the optimizer),
PCGrad's random projection order (the step's generator), SAM's perturbed passes, Adam's moments, a warm-up
plus cosine schedule, and the data order (seeded per epoch). The interrupted run stops twice: once by
``max_steps`` in the middle of epoch 1, once by ``should_stop`` in the middle of epoch 2.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from flatmtl.workers.training import ConfigError, RunDirectory, RunOptions, train
from flatmtl.workers.training.checkpoint import capture_rng, load, restore_rng, save, seed_everything
from flatmtl.workers.training.preparation import prepare_run
from tests.training.specs import spec

pytestmark = pytest.mark.slow

METHOD = {"weighting": "uw", "aggregator": "pcgrad", "wrapper": {"name": "sam", "hparams": {"rho": 0.05}}}
SPEC = {"method": METHOD, "scheduler": {"name": "cosine", "warmup_epochs": 1}, "epochs": 2}
QUIET = RunOptions(plots=False)


def _stop_after(calls: int):
    """A should_stop hook that asks to stop at its ``calls``-th check (checks happen before every step)."""
    seen = {"calls": 0}

    def should_stop() -> bool:
        seen["calls"] += 1
        return seen["calls"] >= calls

    return should_stop


def _without_timings(lines: list[dict]) -> list[dict]:
    timed = (
        "samples_per_s",
        "_seconds",
        "sam_share",
        "aggregation_share",
        "gradient_mode/",
    )  # measured, or chosen by timing
    return [{k: v for k, v in line.items() if not any(t in k for t in timed)} for line in lines]


def test_stopped_and_resumed_run_is_bit_identical(tmp_path: Path) -> None:
    straight = train(spec(**SPEC), tmp_path / "straight", options=QUIET)
    assert straight.status == "SUCCEEDED" and straight.summary["steps"] == 12

    interrupted = tmp_path / "interrupted"
    first = train(spec(**SPEC), interrupted, options=RunOptions(max_steps=4, plots=False))
    assert first.status == "STOPPED" and first.summary["position"] == {"epoch": 0, "batch": 4}
    second = train(spec(**SPEC), interrupted, resume=True, options=QUIET, should_stop=_stop_after(5))
    assert second.status == "STOPPED" and second.summary["position"] == {"epoch": 1, "batch": 2}
    epochs_seen: list[dict] = []
    third = train(spec(**SPEC), interrupted, resume=True, options=QUIET, on_epoch=epochs_seen.append)
    assert third.status == "SUCCEEDED" and third.summary["steps"] == 12
    assert [record["epoch"] for record in epochs_seen] == [2]

    done, resumed = load(RunDirectory(tmp_path / "straight").latest), load(RunDirectory(interrupted).latest)
    assert done["model"].keys() == resumed["model"].keys()
    for name, value in done["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    for a, b in zip(done["weighting_parameters"], resumed["weighting_parameters"], strict=True):
        assert torch.equal(a, b)
    for index, state in done["optimizer"][0]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, resumed["optimizer"][0]["state"][index][key]), (index, key)
    assert torch.equal(done["mtl_step"]["generator"], resumed["mtl_step"]["generator"])

    # the metric files read as if the run had never stopped
    a, b = RunDirectory(tmp_path / "straight"), RunDirectory(interrupted)
    assert _without_timings(a.read_lines(a.step_metrics)) == _without_timings(b.read_lines(b.step_metrics))
    assert _without_timings(a.read_lines(a.epoch_metrics)) == _without_timings(b.read_lines(b.epoch_metrics))


def test_resume_refuses_a_different_spec_and_fresh_runs_refuse_an_existing_one(tmp_path: Path) -> None:
    train(spec(**SPEC), tmp_path, options=RunOptions(max_steps=1, plots=False))
    with pytest.raises(ConfigError, match="optimizer"):
        train(spec(**SPEC, optimizer={"name": "sgd", "lr": 0.1}), tmp_path, resume=True)
    with pytest.raises(ConfigError, match="dtype"):
        train(spec(**SPEC), tmp_path, resume=True, options=RunOptions(dtype="float64"))
    with pytest.raises(ConfigError, match="already holds a run"):
        train(spec(**SPEC), tmp_path)


def test_a_checkpoint_from_before_a_spec_field_existed_resumes_with_its_default(tmp_path: Path) -> None:
    train(spec(**SPEC), tmp_path, options=RunOptions(max_steps=1, plots=False))
    latest = RunDirectory(tmp_path).latest
    saved = load(latest)
    del saved["spec"]["sharding_backend"]  # written by a version that had no such field
    save(latest, {key: value for key, value in saved.items() if key != "format"})
    resumed = train(spec(**SPEC), tmp_path, resume=True, options=RunOptions(max_steps=2, plots=False))
    assert resumed.summary["steps"] == 2


def test_random_state_saved_on_a_gpu_restores_on_the_cpu() -> None:
    """A checkpoint carries one CUDA generator, the rank's own; resuming where it is not (the CPU, or fewer
    visible GPUs) restores the host generators and leaves CUDA's alone instead of failing."""
    seed_everything(7)
    state = capture_rng()
    assert state["cuda"] is None
    expected = torch.rand(3)
    seed_everything(8)
    restore_rng({**state, "cuda": torch.zeros(16, dtype=torch.uint8)}, torch.device("cpu"))
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)


def test_the_deterministic_option_sets_the_process_for_repeatable_cuda_kernels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Deterministic kernels where torch has them (a warning where it has none), cuBLAS's fixed workspace and no
    TF32; off again for the next run in the same process (a Ray worker runs many)."""
    from flatmtl.workers.training import determinism

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        determinism.configure(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.allow_tf32
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == determinism.CUBLAS_WORKSPACE
    finally:
        determinism.configure(False)
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic and torch.backends.cudnn.allow_tf32


def test_run_preparation_resets_a_fresh_run_trims_a_resumed_one_and_drops_an_old_summary(tmp_path: Path) -> None:
    train(spec(**SPEC), tmp_path / "stopped", options=RunOptions(max_steps=2, plots=False))
    stopped = RunDirectory(tmp_path / "stopped")
    stopped.append(stopped.step_metrics, {"step": 3, "epoch": 1, "batch": 3})  # a killed attempt's line
    assert stopped.read_json(stopped.summary)["status"] == "STOPPED"
    with pytest.raises(ConfigError, match="already holds a run"):
        prepare_run(stopped, spec(**SPEC), QUIET, resume=False)
    assert prepare_run(stopped, spec(**SPEC), QUIET, resume=True) is True
    assert [line["step"] for line in stopped.read_lines(stopped.step_metrics)] == [1, 2]
    assert not stopped.summary.exists()

    failed = RunDirectory(tmp_path / "failed")  # an attempt that failed before its first checkpoint
    failed.create()
    failed.write_json(failed.summary, {"status": "FAILED"})
    failed.append(failed.step_metrics, {"step": 1, "epoch": 1, "batch": 1})
    assert prepare_run(failed, spec(**SPEC), QUIET, resume=True) is False
    assert failed.read_lines(failed.step_metrics) == [] and failed.read_lines(failed.epoch_metrics) == []
    assert not failed.summary.exists()
    assert failed.read_json(failed.config) == spec(**SPEC).model_dump(mode="json")
    assert failed.read_json(failed.options) == QUIET.as_dict()
