"""Helpers for the tests that run real work: Ray present (required in CI), tiny specs, worker subprocesses."""

from __future__ import annotations

import contextlib
import copy
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from flatmtl.workers.worker.service_demo import (
    API_COMMAND,
    TERMINAL,
    WORKER_COMMAND,
    api_call,
    api_client,
    free_port,
    process,
    wait_healthy,
)

TASKS = ("top_left", "bottom_right")
TRAIN_SIZE = 128
BATCH_SIZE = 16
TINY: dict[str, Any] = {
    "problem": "multi_digits",
    "problem_options": {"train_size": TRAIN_SIZE, "test_size": 64},
    "model": "mlp",
    "model_options": {"hidden": [16]},
    "epochs": 2,
    "batch_size": BATCH_SIZE,
    "seed": 5,
    "processes": 2,
}


def require_ray() -> None:
    """Skip without Ray, except in CI (``CI`` set), where a missing Ray is a failure."""
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("Ray is not installed; CI must run the worker tests (pip install 'flatmtl[ray]')")
        pytest.skip("Ray is not installed")


def tiny(**overrides: Any) -> dict[str, Any]:
    spec = copy.deepcopy(TINY)
    spec.update(overrides)
    return spec


def code_token(data_dir: Path, user: str) -> str:
    """A token of the ``code`` scope (uploads, and jobs that run them; reads and submits too) in the service's
    migrated database under ``data_dir``."""
    from flatmtl.service.db import Database
    from flatmtl.service.settings import Settings
    from flatmtl.service.tokens import create_token

    settings = Settings(data_dir=data_dir.resolve(), database_url=f"sqlite:///{(data_dir / 'flatmtl.db').resolve()}")
    database = Database.from_settings(settings)
    try:
        return create_token(database, settings.token_key(), user, ["code"])
    finally:
        database.dispose()


def steps_per_epoch(processes: int = 2, train_size: int = TRAIN_SIZE) -> int:
    return train_size // (BATCH_SIZE * processes)


def start_worker(env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """A ``flatmtl worker`` subprocess in its own session (so a test can kill it alone). Its Ray declares 8 CPUs so
    that 3 two-process trials run at once: on 2 cores their start-up (process spawns, imports) overlaps."""
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            [*WORKER_COMMAND, "--poll", "0.2", "--num-cpus", "8", *args],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def line_count(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process and every process it started (its local Ray: GCS, raylet, trials, ranks), as a crashed
    machine or container loses them all at once."""
    import psutil

    try:
        parent = psutil.Process(process.pid)
        victims = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for victim in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.kill()
    psutil.wait_procs(victims, timeout=30)
    process.wait()


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


HEAD_IP = "127.0.0.3"
NODE_IP = "127.0.0.2"
RAY_PORTS = (
    "--node-manager-port",
    "--object-manager-port",
    "--ray-client-server-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
)


@dataclass
class Service:
    """A running API and worker, driven over REST as a user would."""

    client: httpx.Client
    out: Path
    worker: subprocess.Popen[bytes]

    def job_dir(self, job_id: int) -> Path:
        return self.out / "artifacts" / "jobs" / str(job_id)

    def submit(self, spec: dict[str, Any]) -> int:
        return int(api_call(self.client, "POST", "/v1/jobs", json={"spec": spec})["id"])

    def job(self, job_id: int) -> dict[str, Any]:
        return api_call(self.client, "GET", f"/v1/jobs/{job_id}")

    def wait_ended(self, job_id: int, timeout_s: float) -> dict[str, Any]:
        def ended() -> dict[str, Any] | None:
            assert self.worker.poll() is None, f"the worker exited; see {self.out / 'worker.log'}"
            job = self.job(job_id)
            return job if job["state"] in TERMINAL else None

        return wait_until(ended, timeout_s, f"job {job_id} to end", interval_s=0.5)


@contextlib.contextmanager
def running_service(out: Path, env: dict[str, str], token: str) -> Iterator[Service]:
    """A worker (``start_worker``) and the API on a free loopback port, with a client holding ``token``: the
    service as a user meets it. Logs go to ``out``."""
    port = free_port()
    worker = start_worker(env, out / "worker.log")
    try:
        with (
            process([*API_COMMAND, "--port", str(port)], env, out / "api.log") as api,
            api_client(f"http://127.0.0.1:{port}", token) as client,
        ):
            wait_healthy(client, api, out / "api.log", timeout_s=60)
            yield Service(client, out, worker)
    finally:
        stop(worker)


@dataclass
class RayCluster:
    """A Ray head and a second node started with ``ray start``, with token authentication as ``ray start`` sets
    it up: ``env`` is what a process needs to join (the address, ``RAY_AUTH_MODE`` and the token)."""

    address: str
    env: dict[str, str]
    head: subprocess.Popen[bytes]
    node: subprocess.Popen[bytes]
    node_data_dir: Path

    def node_processes(self) -> list[Any]:
        """The second node's processes (its raylet and every worker process it started)."""
        import psutil

        return psutil.Process(self.node.pid).children(recursive=True)


def _ray_start(ip: str, ports: dict[str, int], extra: list[str]) -> list[str]:
    ray = str(Path(sys.executable).with_name("ray"))
    command = [ray, "start", "--block", "--disable-usage-stats", f"--node-ip-address={ip}", *extra]
    return command + [f"{flag}={port}" for flag, port in ports.items()]


def _node_ports() -> dict[str, int]:
    """Distinct free ports for one node's components (held open together while chosen), and a range of worker
    ports below Linux's ephemeral range, where no chosen port falls."""
    import random
    import socket

    sockets = [socket.socket() for _ in RAY_PORTS]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        ports = {flag: int(sock.getsockname()[1]) for flag, sock in zip(RAY_PORTS, sockets, strict=True)}
    finally:
        for sock in sockets:
            sock.close()
    low = random.randrange(20000, 30000, 50)
    return {**ports, "--min-worker-port": low, "--max-worker-port": low + 40}


@contextlib.contextmanager
def two_node_cluster(
    root: Path, hidden: Path, *, cpus: int = 2, extra_env: dict[str, str] | None = None
) -> Iterator[RayCluster]:
    """A head in this mount namespace and a second node in its own (``unshare -m``), with a tmpfs over ``hidden``
    (the service's data directory) and over the head's Ray directory: a second machine that shares no files
    with the head and the worker. Each node gets its own ports; both are stopped by PID.

    Everything stays on loopback addresses. Told 127.0.0.1 (or localhost), Ray on Linux registers the
    machine's interface address instead (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` would keep 127.0.0.1 but
    refuses a joining node); other loopback addresses it takes as they are: the head is 127.0.0.3 and the
    second node 127.0.0.2."""
    from flatmtl.workers.worker.service_demo import free_port

    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.fail("the two-node cluster tests need root and unshare(1) (util-linux) for a mount namespace")
    token = secrets.token_hex(32)
    port = free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_USAGE_STATS_ENABLED": "0",
        **(extra_env or {}),
    }
    temp = root / "ray"
    temp.mkdir(parents=True, exist_ok=True)
    head_log = (root / "ray-head.log").open("ab")
    head = subprocess.Popen(
        _ray_start(
            HEAD_IP,
            _node_ports(),
            ["--head", f"--port={port}", f"--num-cpus={cpus}", "--include-dashboard=false", f"--temp-dir={temp}"],
        ),
        env=env,
        stdout=head_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    node = None
    try:
        address = f"{HEAD_IP}:{port}"
        wait_until(lambda: _nodes_alive(address, env) >= 1, 120, "the Ray head to start", interval_s=2)
        joined = _ray_start(
            NODE_IP, _node_ports(), [f"--address={address}", f"--num-cpus={cpus}", f"--temp-dir={temp}"]
        )
        hide = " && ".join(f"mount -t tmpfs tmpfs {shlex.quote(str(path))}" for path in (hidden, temp))
        node_log = (root / "ray-node.log").open("ab")
        node = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", f"{hide} && exec {shlex.join(joined)}"],
            env=env,
            stdout=node_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(lambda: _nodes_alive(address, env) >= 2, 120, "the second Ray node to join", interval_s=2)
        yield RayCluster(address, {**env, "FLATMTL_RAY_ADDRESS": address}, head, node, hidden)
    finally:
        for process in (node, head):
            if process is not None:
                kill_tree(process)


def _nodes_alive(address: str, env: dict[str, str]) -> int:
    """Alive nodes, asked by a short-lived driver in another process (this one must not stay connected)."""
    script = f"import ray; ray.init(address={address!r}); print(sum(1 for n in ray.nodes() if n['Alive']))"
    try:
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return 0
    lines = done.stdout.strip().splitlines()
    return int(lines[-1]) if done.returncode == 0 and lines and lines[-1].isdigit() else 0
