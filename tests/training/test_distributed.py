"""A 2-process gloo run equals the 1-process run on the same global batches.

Both see the same permutation cut into global batches of 2 x 16 samples (the 2-process run gives each rank
16); per-task gradients are averaged over ranks before aggregation, so every step is the same computation up
to float64 summation order. PCGrad's random projection order and SAM's perturbation check that the ranks'
generators and norms agree too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flatmtl.workers import problems
from flatmtl.workers.training import RunDirectory, RunOptions, train
from flatmtl.workers.training.checkpoint import load, seed_everything
from tests.training.specs import TASKS, TEST_SIZE, TRAIN_SIZE, spec

pytestmark = pytest.mark.slow

METHOD = {"weighting": "uw", "aggregator": "pcgrad", "wrapper": {"name": "sam", "hparams": {"rho": 0.05}}}


def _final_model(run_dir: Path) -> dict[str, torch.Tensor]:
    return load(RunDirectory(run_dir).latest)["model"]


def _initial() -> tuple[list[torch.Tensor], int]:
    """The parameters both runs start from (the spec's seed, then the model), and how many are shared."""
    seed_everything(3)
    problem = problems.build("multi_digits", train_size=TRAIN_SIZE, test_size=TEST_SIZE)
    model = problem.model("mlp", hidden=(16,)).double()
    return list(model.state_dict().values()), sum(p.numel() for p in model.shared_parameters())


def _losses(run_dir: Path) -> list[list[float]]:
    run = RunDirectory(run_dir)
    return [[line[f"loss/{task}"] for task in TASKS] for line in run.read_lines(run.step_metrics)]


def test_two_process_data_parallel_matches_one_process_on_the_global_batch(tmp_path: Path) -> None:
    options = RunOptions(dtype="float64", max_steps=4, plots=False)
    local = train(spec(method=METHOD, batch_size=32, epochs=1), tmp_path / "local", options=options)
    ddp = train(spec(method=METHOD, batch_size=16, processes=2, epochs=1), tmp_path / "ddp", options=options)
    assert local.summary["steps"] == ddp.summary["steps"] == 4
    assert ddp.summary["processes"] == 2
    local_params, ddp_params = _final_model(tmp_path / "local"), _final_model(tmp_path / "ddp")
    assert local_params.keys() == ddp_params.keys()
    initial, num_shared = _initial()
    moved = max(float((p - q).abs().max()) for p, q in zip(local_params.values(), initial, strict=True))
    assert moved > 1e-3
    torch.testing.assert_close(torch.tensor(_losses(tmp_path / "ddp")), torch.tensor(_losses(tmp_path / "local")))
    for name, value in local_params.items():
        torch.testing.assert_close(ddp_params[name], value, rtol=0, atol=1e-9, msg=name)
    # A ring all-reduce of the [K, P] float64 per-task gradients alone sends 2 (N-1)/N K P 8 bytes per rank.
    assert all(sent == 0 for sent in _sent(tmp_path / "local"))
    assert all(sent >= len(TASKS) * num_shared * 8 for sent in _sent(tmp_path / "ddp"))


def _sent(run_dir: Path) -> list[float]:
    run = RunDirectory(run_dir)
    return [line["communication_bytes"] for line in run.read_lines(run.step_metrics)]
