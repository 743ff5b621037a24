"""Over HTTP, a string where the spec wants a number or boolean is a 422 naming the field, the value and the type;
``flatmtl submit`` reads exponents in YAML files as numbers, so such files still go through."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

import flatmtl.service.cli
from flatmtl.service import queue
from flatmtl.workers.training import RunDirectory, RunOptions, determinism
from flatmtl.workers.training.trainer import RankContext, Trainer
from flatmtl.workers.worker.plan import plan_job
from tests.api.conftest import Api
from tests.api.test_cli import BorrowedClient
from tests.api.test_jobs_api import TRAIN


@pytest.mark.parametrize(
    ("submission", "field", "value", "expected"),
    [
        ({"spec": {**TRAIN, "epochs": "3"}}, "spec.epochs", "3", "valid integer"),
        ({"spec": {**TRAIN, "optimizer": {"lr": "1e-3"}}}, "spec.optimizer.lr", "1e-3", "valid number"),
        ({"spec": {**TRAIN, "optimizer": {"lr": False}}}, "spec.optimizer.lr", False, "valid number"),
        ({"spec": TRAIN, "priority": "5"}, "priority", "5", "valid integer"),
        ({"spec": {**TRAIN, "deterministic": "yes"}}, "spec.deterministic", "yes", "valid boolean"),
        ({"spec": {**TRAIN, "loader_workers": -1}}, "spec.loader_workers", -1, "greater than or equal to 0"),
        (
            {"spec": {**TRAIN, "method": {"wrapper": {"name": "fmtl", "hparams": {"rho": "0.05"}}}}},
            "spec.method.wrapper.hparams.rho",
            "0.05",
            "not a number",
        ),
    ],
)
def test_typed_fields_refuse_strings_with_422(
    api: Api, submission: dict[str, Any], field: str, value: Any, expected: str
) -> None:
    response = api.client.post("/v1/jobs", json=submission, headers=api.as_user("alice"))
    assert response.status_code == 422, response.text
    body = response.json()
    (error,) = body["errors"]
    assert (error["field"], error["value"]) == (field, value)
    assert expected in error["message"] and field in body["message"] and error["allowed"]
    assert api.client.get("/v1/jobs", headers=api.as_user("alice")).json()["items"] == []


def test_cli_submits_a_yaml_spec_with_exponents(api: Api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(flatmtl.service.cli, "make_client", lambda _url, token: BorrowedClient(api.client, token))
    path = tmp_path / "job.yaml"
    path.write_text(
        "problem: multi_digits\nepochs: 2\noptimizer:\n  lr: 1e-3\n  weight_decay: 5E-4\n"
        "method:\n  wrapper: {name: fmtl, hparams: {rho: 5e-2}}\n"
    )
    result = CliRunner().invoke(flatmtl.service.cli.submit, [str(path), "--token", api.tokens["alice"]])
    assert result.exit_code == 0, result.output
    job = api.client.get(f"/v1/jobs/{int(result.output)}", headers=api.as_user("alice")).json()
    assert (job["spec"]["optimizer"]["lr"], job["spec"]["optimizer"]["weight_decay"]) == (0.001, 0.0005)
    assert job["spec"]["method"]["wrapper"]["hparams"]["rho"] == 0.05


def test_execution_settings_of_a_submitted_sweep_reach_every_trials_trainer(api: Api, tmp_path: Path) -> None:
    """``deterministic`` and ``loader_workers`` of a sweep's base travel in the stored spec to every trial the
    worker plans, and the trainer a rank builds from a trial sets its process and its loader by them."""
    base = {
        "problem": "multi_digits",
        "problem_options": {"train_size": 64, "test_size": 32},
        "deterministic": True,
        "loader_workers": 1,
    }
    space = {"optimizer.lr": {"type": "grid", "values": [0.01, 0.1]}}
    sweep = {"kind": "sweep", "base": base, "space": space, "metric": "test/mean/accuracy", "mode": "max"}
    response = api.client.post("/v1/jobs", json={"spec": sweep}, headers=api.as_user("alice"))
    assert response.status_code == 201, response.text
    lease = queue.claim(api.db, "tester", 60)
    assert lease is not None
    plan = plan_job(lease.job_id, lease.spec, tmp_path / "artifacts")
    assert len(plan.trials) == 2
    assert all(trial.spec.deterministic and trial.spec.loader_workers == 1 for trial in plan.trials)
    folder = RunDirectory(tmp_path / "run")
    folder.create()
    try:
        trainer = Trainer(plan.trials[0].spec, folder, RunOptions(device="cpu", plots=False), RankContext())
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.allow_tf32
        assert trainer.loader_workers == 1
    finally:
        determinism.configure(False)
