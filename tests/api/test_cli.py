"""The control-plane CLI against the in-process API: submit (with --wait), jobs, logs, cancel, token create."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from fastapi.testclient import TestClient

import flatmtl.service.cli
from flatmtl.service import artifacts, queue
from flatmtl.service.cli import commands
from flatmtl.service.db import Database
from flatmtl.service.settings import Settings
from flatmtl.service.tokens import authenticate
from tests.api.conftest import Api
from tests.api.test_jobs_api import TRAIN

COMMANDS = {command.name: command for command in commands}


class BorrowedClient:
    """The test app's client with a token, usable in ``with`` without restarting the app."""

    def __init__(self, inner: TestClient, token: str | None) -> None:
        self.inner, self.base_url = inner, inner.base_url
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.inner.request(method, path, headers=self.auth, **kwargs)

    def __enter__(self) -> BorrowedClient:
        return self

    def __exit__(self, *_: object) -> None:
        return None


@pytest.fixture
def cli(api: Api, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setattr(flatmtl.service.cli, "make_client", lambda _url, token: BorrowedClient(api.client, token))
    monkeypatch.setenv("FLATMTL_TOKEN", api.tokens["alice"])
    return CliRunner()


def spec_file(tmp_path: Path, spec: dict[str, Any]) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_submit_jobs_logs_cancel(cli: CliRunner, api: Api, tmp_path: Path) -> None:
    submitted = cli.invoke(COMMANDS["submit"], [spec_file(tmp_path, {**TRAIN, "name": "cli-run"}), "--priority", "3"])
    assert submitted.exit_code == 0, submitted.output
    job_id = int(submitted.output.strip())
    listed = cli.invoke(COMMANDS["jobs"], ["--state", "queued"])
    assert listed.exit_code == 0 and f"{job_id:>6}  train  queued" in listed.output and "cli-run" in listed.output

    log = artifacts.log_path(api.settings.artifacts, job_id)
    log.parent.mkdir(parents=True)
    log.write_text("epoch 1\nepoch 2\n")
    assert cli.invoke(COMMANDS["logs"], [str(job_id), "--tail", "1"]).output == "epoch 2\n"

    assert cli.invoke(COMMANDS["cancel"], [str(job_id)]).output == f"job {job_id} cancelled\n"
    again = cli.invoke(COMMANDS["cancel"], [str(job_id)])
    assert again.exit_code == 1 and "409: job" in again.output and "already cancelled" in again.output


def test_submit_reports_the_servers_field_errors(cli: CliRunner, tmp_path: Path) -> None:
    bad = {**TRAIN, "method": {"wrapper": {"name": "fmtl", "hparams": {"alpha": 3}}}}
    result = cli.invoke(COMMANDS["submit"], [spec_file(tmp_path, bad)])
    assert result.exit_code == 1
    assert "spec.method.wrapper.hparams.alpha = 3" in result.output and "[0, 1]" in result.output


@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
def test_submit_wait_follows_the_job_to_its_end(cli: CliRunner, api: Api, tmp_path: Path, outcome: str) -> None:
    def worker() -> None:
        lease = None
        while lease is None:
            time.sleep(0.02)
            lease = queue.claim(api.db, "worker", 30)
        queue.heartbeat(api.db, lease, 30, progress=0.5)
        time.sleep(0.1)
        queue.complete(api.db, lease, outcome, error=None if outcome == "succeeded" else "loss became NaN")  # type: ignore[arg-type]

    thread = threading.Thread(target=worker)
    thread.start()
    result = cli.invoke(COMMANDS["submit"], [spec_file(tmp_path, TRAIN), "--wait", "--poll", "0.05"])
    thread.join(timeout=30)
    assert result.exit_code == (0 if outcome == "succeeded" else 1), result.output
    assert f"{outcome}" in result.output
    if outcome == "failed":
        assert "loss became NaN" in result.output


def test_token_create_stores_a_usable_hashed_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLATMTL_DATA_DIR", str(tmp_path))
    for name in ("FLATMTL_DATABASE_URL", "FLATMTL_TOKEN_SECRET", "FLATMTL_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(COMMANDS["token"], ["create", "--user", "carol", "--scope", "read"])
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    settings = Settings(data_dir=tmp_path)
    database = Database.from_settings(settings)
    try:
        principal = authenticate(database, settings.token_key(), token)
        assert principal is not None and principal.user == "carol" and principal.scopes == {"read"}
        with database.engine.connect() as connection:
            stored = connection.exec_driver_sql("SELECT token_hash FROM api_tokens").scalars().all()
        assert len(stored) == 1 and token not in stored[0]
        revoked = CliRunner().invoke(COMMANDS["token"], ["revoke", token[:11]])
        assert revoked.exit_code == 0 and authenticate(database, settings.token_key(), token) is None
    finally:
        database.dispose()


def test_jobs_shows_a_partially_failed_sweeps_trial_counts(cli: CliRunner, api: Api, tmp_path: Path) -> None:
    job_id = int(cli.invoke(COMMANDS["submit"], [spec_file(tmp_path, TRAIN)]).output)
    lease = queue.claim(api.db, "worker", 30)
    assert lease is not None and lease.job_id == job_id
    counts = {"succeeded": 2, "failed": 1}
    queue.complete(api.db, lease, "partially_failed", result={"trials": counts}, error="1 of 3 trials failed")
    listed = cli.invoke(COMMANDS["jobs"], ["--state", "partially_failed"])
    assert listed.exit_code == 0, listed.output
    assert f"{job_id:>6}  train  partially_failed      100%" in listed.output
    assert "1 failed, 2 succeeded" in listed.output
    assert (
        api.client.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {api.tokens['alice']}"}).json()["state"]
        == "partially_failed"
    )
