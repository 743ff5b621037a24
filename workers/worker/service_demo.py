"""``flatmtl demo service``: the whole service on one machine, driven the way a user drives it.

It starts the REST API (uvicorn, a subprocess) and a worker (a subprocess with a local Ray) on an embedded
SQLite database under ``out``, creates an API token, submits a SAMO (or F-MTL) sweep over rho x alpha on
``multi_fashion`` (when Debian's Fashion-MNIST package is installed, else ``multi_digits``) through REST,
follows the job and its trials through REST, and prints the best trial with the paths of its summary and
plots. Both subprocesses are stopped at the end, whatever happens.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

TERMINAL = ("succeeded", "partially_failed", "failed", "cancelled")
METRIC = "test/mean/accuracy"
RADII = {"samo": ("rho", "alpha"), "fmtl": ("rho_shared", "rho_task")}
POLL_S = 2.0
API_COMMAND = (sys.executable, "-c", "from flatmtl.service.cli import serve; serve()")
"""``flatmtl serve`` as a subprocess of this interpreter (no console script needed); append ``--port``."""
WORKER_COMMAND = (sys.executable, "-c", "from flatmtl.workers.worker.cli import worker_command; worker_command()")
"""``flatmtl worker`` (with its local Ray) as a subprocess of this interpreter; append its options."""


class DemoError(RuntimeError):
    """The demo could not finish; the message says where to look."""


def default_problem() -> str:
    """``multi_fashion`` when its data is on this machine, else ``multi_digits`` (always available)."""
    from flatmtl.workers import problems

    try:
        problems.build("multi_fashion", train_size=64, test_size=64)
    except (problems.ProblemError, OSError):
        return "multi_digits"
    return "multi_fashion"


@dataclass(frozen=True)
class ServiceDemo:
    out: Path
    problem: str = "multi_digits"
    wrapper: str = "samo"
    rhos: tuple[float, ...] | list[float] = (0.001, 0.01)
    alphas: tuple[float, ...] | list[float] = (0.25, 0.75)
    epochs: int = 3
    processes: int = 1
    train_size: int = 1200
    timeout_s: float = 900.0
    poll_s: float = POLL_S

    def sweep(self) -> dict[str, Any]:
        """The sweep the demo submits: every (rho, alpha) pair, each trial a small MLP run."""
        first, second = RADII[self.wrapper]
        return {
            "kind": "sweep",
            "name": f"{self.wrapper}-rho-x-alpha",
            "base": {
                "problem": self.problem,
                "problem_options": {"train_size": self.train_size, "test_size": 400},
                "model": "mlp",
                "model_options": {"hidden": [64]},
                "method": {"wrapper": {"name": self.wrapper}},
                "optimizer": {"name": "adam", "lr": 0.003},
                "epochs": self.epochs,
                "batch_size": 64,
                "seed": 0,
                "processes": self.processes,
            },
            "space": {
                f"wrapper.{first}": {"type": "grid", "values": list(self.rhos)},
                f"wrapper.{second}": {"type": "grid", "values": list(self.alphas)},
            },
            "metric": METRIC,
            "mode": "max",
        }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def process(command: list[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess logging to ``log_path``; SIGTERM on exit, SIGKILL if it has not ended 30 s later."""
    with log_path.open("ab") as log_file:
        child = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            yield child
        finally:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()


def service_env(out: Path, **extra: str) -> dict[str, str]:
    """The environment of the API and the worker: settings pointing both at ``out`` (its SQLite database unless
    ``extra`` names another), nothing inherited from the caller's ``FLATMTL_*`` variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLATMTL_")}
    env.update(
        FLATMTL_DATA_DIR=str(out.resolve()),
        FLATMTL_DATABASE_URL=f"sqlite:///{(out / 'flatmtl.db').resolve()}",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def create_demo_token(out: Path, user: str = "demo") -> str:
    """Migrate the database and create a submit token (what ``flatmtl token create`` does)."""
    from flatmtl.service.db import Database
    from flatmtl.service.settings import Settings
    from flatmtl.service.tokens import create_token

    settings = Settings(data_dir=out.resolve(), database_url=f"sqlite:///{(out / 'flatmtl.db').resolve()}")
    database = Database.from_settings(settings)
    try:
        database.migrate()
        return create_token(database, settings.token_key(), user, ["submit"])
    finally:
        database.dispose()


def api_client(url: str, token: str) -> httpx.Client:
    """A REST client of the API at ``url`` that sends ``token``."""
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30.0)


def wait_healthy(client: httpx.Client, api: subprocess.Popen[bytes], log_path: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if api.poll() is not None:
            raise DemoError(f"the API exited with code {api.returncode}; see {log_path}")
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise DemoError(f"the API did not answer /healthz within {timeout_s:.0f} s; see {log_path}")


def api_call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    response = client.request(method, path, **kwargs)
    if response.status_code >= 400:
        raise DemoError(f"{method} {path} answered {response.status_code}: {response.text[:1000]}")
    return response.json()


def _trial_line(trial: dict[str, Any], names: tuple[str, str]) -> str:
    config = trial["config"]
    values = "  ".join(f"{name}={config.get(f'method.wrapper.hparams.{name}')!s:<7}" for name in names)
    best = trial["best_metric"]
    shown = "-" if best is None else f"{best:.4f}"
    return f"  trial {trial['trial_index']}  {values}  {trial['state']:<9}  {METRIC}={shown}"


def follow(
    client: httpx.Client,
    job_id: int,
    worker: subprocess.Popen[bytes],
    echo: Callable[[str], None],
    *,
    timeout_s: float,
    worker_log: Path,
    poll_s: float = POLL_S,
) -> dict[str, Any]:
    """Poll the job every ``poll_s`` until it ends, echoing progress whenever it changes; the final job with its
    trials. A worker that exits first fails the follow (pointing at ``worker_log``); a job still running after
    ``timeout_s`` is cancelled."""
    deadline = time.monotonic() + timeout_s
    shown = ""
    started = time.monotonic()
    while True:
        job = api_call(client, "GET", f"/v1/jobs/{job_id}")
        trials = api_call(client, "GET", f"/v1/jobs/{job_id}/trials")["items"]
        states: dict[str, int] = {}
        for trial in trials:
            states[trial["state"]] = states.get(trial["state"], 0) + 1
        scored = [t for t in trials if t["best_metric"] is not None]
        best = max(scored, key=lambda t: t["best_metric"]) if scored else None
        line = (
            f"[{100 * (job['progress'] or 0):3.0f}%] job {job_id} {job['state']}; trials: "
            + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
            + (f"; best {METRIC} {best['best_metric']:.4f} (trial {best['trial_index']})" if best else "")
        )
        if line != shown:
            echo(f"{time.monotonic() - started:6.1f}s {line}")
            shown = line
        if job["state"] in TERMINAL:
            return {**job, "trials": trials}
        if worker.poll() is not None:
            raise DemoError(f"the worker exited with code {worker.returncode}; see {worker_log}")
        if time.monotonic() > deadline:
            api_call(client, "POST", f"/v1/jobs/{job_id}/cancel")
            raise DemoError(f"job {job_id} did not finish within {timeout_s:.0f} s and was cancelled")
        time.sleep(poll_s)


def report(job: dict[str, Any], demo: ServiceDemo, url: str, echo: Callable[[str], None]) -> None:
    names = RADII[demo.wrapper]
    echo("")
    for trial in job["trials"]:
        echo(_trial_line(trial, names))
    if job["state"] != "succeeded":
        raise DemoError(f"job {job['id']} {job['state']}: {job.get('error')}; see {demo.out / 'worker.log'}")
    result = job["result"]
    root = (demo.out / "artifacts" / "jobs" / str(job["id"])).resolve()
    config = ", ".join(f"{path.rsplit('.', 1)[-1]}={value}" for path, value in result["best_config"].items())
    echo("")
    echo(f"best trial: {result['best_trial']} ({config}) with {result['metric']} = {result['best_metric']:.4f}")
    echo(f"  run directory: {root / result['best_run_dir']}")
    if result.get("best_summary"):
        echo(f"  report:        {root / result['best_summary']}")
    for plot in result.get("best_plots", []):
        echo(f"  plot:          {root / plot}")
    echo(f"  over REST:     {url}/v1/jobs/{job['id']}/trials and {url}/v1/jobs/{job['id']}/artifacts")


def run_service_demo(demo: ServiceDemo, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo end to end; the finished job as the API returns it (with its trials)."""
    demo.out.mkdir(parents=True, exist_ok=True)
    token = create_demo_token(demo.out)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = service_env(demo.out, FLATMTL_API_PORT=str(port))
    api_log, worker_log = demo.out / "api.log", demo.out / "worker.log"
    echo(f"data directory {demo.out.resolve()} (SQLite); API log {api_log}, worker log {worker_log}")
    with ExitStack() as stack:
        worker = stack.enter_context(process([*WORKER_COMMAND, "--poll", "0.5"], env, worker_log))
        api = stack.enter_context(process([*API_COMMAND, "--port", str(port)], env, api_log))
        client = stack.enter_context(api_client(url, token))
        wait_healthy(client, api, api_log)
        echo(f"API up at {url}; worker starting a local Ray")
        job = api_call(client, "POST", "/v1/jobs", json={"spec": demo.sweep()})
        echo(f"submitted sweep job {job['id']} over REST: {demo.wrapper} on {demo.problem}, {METRIC} (max)")
        final = follow(
            client, job["id"], worker, echo, timeout_s=demo.timeout_s, worker_log=worker_log, poll_s=demo.poll_s
        )
        report(final, demo, url, echo)
        return final
