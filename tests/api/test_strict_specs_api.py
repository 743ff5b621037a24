"""Over HTTP, a string where the spec wants a number or boolean is a 422 naming the field, the value and the type;
``flatmtl submit`` reads exponents in YAML files as numbers, so such files still go through."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import flatmtl.service.cli
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
    assert expected in error["message"] and field in body["message"]
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
