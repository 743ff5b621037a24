"""The real service for the deploy tests: ``flatmtl serve`` and ``flatmtl worker`` (local Ray) as subprocesses on
a SQLite database in a temporary folder, driven over REST with a token made the way ``flatmtl token create`` does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy.prometheus_server import free_port, wait_for

FLATMTL = Path(sys.executable).with_name("flatmtl")


def require_ray() -> None:
    """Skip without Ray, except under CI (``CI`` set), where a missing Ray is a failure."""
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("Ray is not installed; CI must run the live deploy test (pip install 'flatmtl[ray]')")
        pytest.skip("Ray is not installed")


@dataclass(frozen=True)
class Service:
    """A running API and worker: ``target`` is host:port for Prometheus, ``client`` carries a submit token."""

    target: str
    client: httpx.Client
    worker: subprocess.Popen[bytes]
    logs: Path

    def submit(self, spec: dict[str, Any]) -> int:
        response = self.client.post("/v1/jobs", json={"spec": spec})
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    def job(self, job_id: int) -> dict[str, Any]:
        response = self.client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def cancel(self, job_id: int) -> None:
        response = self.client.post(f"/v1/jobs/{job_id}/cancel")
        assert response.status_code == 200, response.text

    def scrape(self) -> bytes:
        """One ``GET /metrics``, as Prometheus makes it."""
        response = self.client.get("/metrics")
        assert response.status_code == 200, response.text
        return response.content

    def log_tail(self, chars: int = 4000) -> str:
        return "\n".join(f"--- {path.name}:\n{path.read_text()[-chars:]}" for path in sorted(self.logs.glob("*.log")))


def _env(data: Path, port: int) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLATMTL_")}
    env.update(
        FLATMTL_DATA_DIR=str(data),
        FLATMTL_DATABASE_URL=f"sqlite:///{data / 'flatmtl.db'}",
        FLATMTL_API_PORT=str(port),
        PYTHONUNBUFFERED="1",
    )
    return env


def _token(data: Path) -> str:
    from flatmtl.service.db import Database
    from flatmtl.service.settings import Settings
    from flatmtl.service.tokens import create_token

    settings = Settings(data_dir=data, database_url=f"sqlite:///{data / 'flatmtl.db'}")
    database = Database.from_settings(settings)
    try:
        database.migrate()
        return create_token(database, settings.token_key(), "operator", ["submit"])
    finally:
        database.dispose()


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group (the worker's local Ray included), SIGKILL what is left after 20 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@contextmanager
def _process(command: list[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        _stop(process)


@contextmanager
def running_service(workdir: Path, *, worker_cpus: int = 2) -> Iterator[Service]:
    """Start the worker first (its Ray takes longest), then the API; yield once the API answers ``/healthz``."""
    if not FLATMTL.exists():
        extras = "service,deepspeed,datasets,tables,ray"
        pytest.fail(f"{FLATMTL} not found: install the project (pip install -e '.[{extras}]')")
    data = workdir.resolve()
    data.mkdir(parents=True, exist_ok=True)
    token = _token(data)
    port = free_port()
    env = _env(data, port)
    with ExitStack() as stack:
        worker = stack.enter_context(
            _process(
                [str(FLATMTL), "worker", "--poll", "0.2", "--num-cpus", str(worker_cpus)], env, data / "worker.log"
            )
        )
        api = stack.enter_context(_process([str(FLATMTL), "serve", "--port", str(port)], env, data / "api.log"))
        client = stack.enter_context(
            httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        )
        service = Service(f"127.0.0.1:{port}", client, worker, data)

        def healthy() -> bool:
            assert api.poll() is None, f"the API exited with code {api.returncode}\n{service.log_tail()}"
            try:
                return client.get("/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 60, "the API's /healthz")
        yield service
