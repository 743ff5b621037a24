"""Control-plane cost: job submissions over REST, and a training job through the service against the same run
called directly.

1. ``POST /v1/jobs`` against a real API (``flatmtl.api.server.serve``: uvicorn, no access log, 1 or more processes) on
   SQLite and, when a PostgreSQL URL is given, on PostgreSQL: submissions per second and p50/p99 latency for
   each client count (targets on SQLite on 2 cores: >= 300/s, p99 < 50 ms). The clients are separate processes
   with one keep-alive ``http.client`` connection each, so they stay cheap; their CPU share (CPU seconds per
   wall second, over all clients) and the server's CPU milliseconds per request are reported with the rates.
   Side by side, the floors on the same machine: an empty FastAPI route served the same way, and a bare
   INSERT + COMMIT of the same job row (sqlite3 with the API's pragmas; psycopg on PostgreSQL).
2. One training job (DDP, 2 processes) through REST + queue + worker + Ray Train, against
   ``flatmtl.workers.training.local.train`` on the same spec and options: training throughput (the runs' own
   ``train/samples_per_s``, epoch means; target ratio >= 0.9) and, for information, samples per second of wall
   time from submission to the job's success (the worker's Ray already started; trial start-up included).

    .venv/bin/python benchmarks/control_plane.py [--submissions 2000] [--clients 1,4] [--workers 1,2]
    eval "$(scripts/start_postgres.sh)"; .venv/bin/python benchmarks/control_plane.py \
        --postgres-url "$FLATMTL_TEST_POSTGRES_URL"
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from flatmtl.workers.worker.service_demo import (
    api_call,
    create_demo_token,
    free_port,
    process,
    service_env,
    wait_healthy,
)

SUBMITTED: dict[str, Any] = {"problem": "multi_digits", "model": "mlp", "epochs": 1}
TRAINING: dict[str, Any] = {
    "problem": "multi_digits",
    "problem_options": {"train_size": 4096, "test_size": 512},
    "model": "mlp",
    "model_options": {"hidden": [128, 128]},
    "epochs": 3,
    "batch_size": 64,
    "seed": 0,
    "processes": 2,
}
WORKER = [sys.executable, "-c", "from flatmtl.workers.worker.cli import worker_command; worker_command()"]
SERVE = (
    "import sys; from flatmtl.api.server import serve; from flatmtl.service.settings import load_settings; "
    "serve(load_settings(), port=int(sys.argv[1]), workers=int(sys.argv[2]), access_log=False)"
)
EMPTY_APP = """
import sys, uvicorn
from fastapi import FastAPI
app = FastAPI()

@app.post("/v1/jobs", status_code=201)
async def submit() -> dict:
    return {"id": 1}

@app.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=False)
"""


@dataclass(frozen=True)
class Server:
    url: str
    token: str
    process: psutil.Process

    def cpu_seconds(self) -> float:
        """User + system CPU of the server and its worker processes."""
        total = 0.0
        for each in [self.process, *self.process.children(recursive=True)]:
            try:
                times = each.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total


@contextmanager
def api_server(out: Path, database_url: str | None, workers: int = 1) -> Iterator[Server]:
    """An API subprocess on ``database_url`` (default: SQLite under ``out``) and a submit token for it."""
    extra = {"FLATMTL_DATABASE_URL": database_url} if database_url else {}
    env = service_env(out, **extra)
    if database_url:
        from flatmtl.service.db import Database
        from flatmtl.service.settings import Settings
        from flatmtl.service.tokens import create_token

        settings = Settings(data_dir=out.resolve(), database_url=database_url)
        database = Database.from_settings(settings)
        database.migrate()
        token = create_token(database, settings.token_key(), "bench", ["submit"])
        database.dispose()
    else:
        token = create_demo_token(out, "bench")
    port = free_port()
    with served([sys.executable, "-c", SERVE, str(port), str(workers)], env, out / "api.log", port) as api:
        yield Server(f"http://127.0.0.1:{port}", token, api)


@contextmanager
def served(command: list[str], env: dict[str, str], log: Path, port: int) -> Iterator[psutil.Process]:
    with (
        process(command, env, log) as api,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        wait_healthy(client, api, log, timeout_s=120)
        yield psutil.Process(api.pid)


def _client(port: int, token: str, count: int, start: Any, results: Any) -> None:
    """One client process: ``count`` sequential submissions on one keep-alive connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = json.dumps({"spec": SUBMITTED}).encode()  # bytes: headers and body leave in one send (no Nagle stall)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    latencies, failures = [], []
    start.wait()
    began = time.process_time()
    for _ in range(count):
        sent = time.perf_counter()
        connection.request("POST", "/v1/jobs", body, headers)
        response = connection.getresponse()
        text = response.read()
        latencies.append(time.perf_counter() - sent)
        if response.status != 201:
            failures.append(f"{response.status}: {text[:200]!r}")
    results.put((latencies, failures, time.process_time() - began))


def submit_load(server: Server, total: int, clients: int) -> dict[str, Any]:
    """``total`` submissions from ``clients`` processes: rate, latency percentiles, CPU of clients and server."""
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    port = int(server.url.rsplit(":", 1)[1])
    shares = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    workers = [context.Process(target=_client, args=(port, server.token, n, start, results)) for n in shares]
    for worker in workers:
        worker.start()
    time.sleep(1.0)  # the clients have imported and wait on the event
    server_cpu, began = server.cpu_seconds(), time.perf_counter()
    start.set()
    collected = [results.get(timeout=600) for _ in workers]
    wall, server_cpu = time.perf_counter() - began, server.cpu_seconds() - server_cpu
    for worker in workers:
        worker.join()
    failures = [failure for _, found, _ in collected for failure in found]
    if failures:
        raise RuntimeError(f"{len(failures)} submissions failed, first: {failures[0]}")
    latencies = [latency for found, _, _ in collected for latency in found]
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "clients": clients,
        "submissions": total,
        "per_second": total / wall,
        "p50_ms": 1000 * cuts[49],
        "p99_ms": 1000 * cuts[98],
        "server_cpu_ms_per_request": 1000 * server_cpu / total,
        "client_cpu_share": sum(cpu for _, _, cpu in collected) / wall,
        "load_average": psutil.getloadavg()[0],
    }


def bench_submissions(
    database: str, url: str | None, total: int, clients: list[int], workers: int
) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as directory, api_server(Path(directory), url, workers) as server:
        submit_load(server, 200, 1)  # warm-up: connection pools, first-request imports
        for count in clients:
            rows.append({"database": database, "workers": workers, **submit_load(server, total, count)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def bench_empty_route(total: int, clients: list[int]) -> list[dict[str, Any]]:
    """The floor of the HTTP stack: an empty FastAPI route under the same uvicorn settings and clients."""
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        out, port = Path(directory), free_port()
        with served([sys.executable, "-c", EMPTY_APP, str(port)], service_env(out), out / "empty.log", port) as api:
            server = Server(f"http://127.0.0.1:{port}", "unused", api)
            submit_load(server, 200, 1)
            for count in clients:
                rows.append({"database": "none (empty route)", "workers": 1, **submit_load(server, total, count)})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def bench_bare_inserts(url: str | None, total: int) -> dict[str, Any]:
    """The floor of the database: INSERT + COMMIT of the job row, one transaction each, from one connection."""
    row = ("train", "queued", json.dumps(SUBMITTED), 0, "bench", 1, 3, 0, "2026-01-01 00:00:00.000000")
    columns = "kind, state, spec, priority, created_by, attempt, max_attempts, lease_token, created_at"
    with tempfile.TemporaryDirectory() as directory:
        if url is None:
            connection: Any = sqlite3.connect(Path(directory) / "bare.db", isolation_level=None)
            for pragma in ("journal_mode=WAL", "synchronous=NORMAL"):
                connection.execute(f"PRAGMA {pragma}")
            begin, marks = "BEGIN IMMEDIATE", ", ".join("?" * len(row))
        else:
            import psycopg

            connection = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
            begin, marks = "BEGIN", ", ".join(["%s"] * len(row))
        table = "bench_bare_jobs"
        connection.execute(f"DROP TABLE IF EXISTS {table}")
        connection.execute(
            f"CREATE TABLE {table} (id {'INTEGER' if url is None else 'BIGSERIAL'} PRIMARY KEY, "
            "kind TEXT, state TEXT, spec TEXT, priority INT, created_by TEXT, attempt INT, "
            "max_attempts INT, lease_token BIGINT, created_at TEXT)"
        )
        began = time.perf_counter()
        for _ in range(total):
            connection.execute(begin)
            connection.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", row)
            connection.execute("COMMIT")
        wall = time.perf_counter() - began
        connection.execute(f"DROP TABLE {table}")
        connection.close()
    return {
        "database": "sqlite" if url is None else "postgresql",
        "per_second": total / wall,
        "ms_each": 1000 * wall / total,
    }


def epoch_throughput(run_dir: Path) -> float:
    """Mean of the epochs' training samples per second, as the run itself measured them."""
    lines = [json.loads(line) for line in (run_dir / "metrics_epochs.jsonl").read_text().splitlines()]
    return statistics.fmean(line["train/samples_per_s"] for line in lines)


def total_samples(spec: dict[str, Any]) -> int:
    global_batch = spec["batch_size"] * spec["processes"]
    steps = spec["problem_options"]["train_size"] // global_batch
    return steps * global_batch * spec["epochs"]


def bench_training(ray_cpus: int) -> dict[str, Any]:
    from flatmtl.workers.training import RunOptions, train

    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        started = time.perf_counter()
        train(TRAINING, root / "direct", options=RunOptions(device="cpu", threads=1))
        direct_wall = time.perf_counter() - started
        direct = {"samples_per_s": epoch_throughput(root / "direct"), "wall_s": direct_wall}

        out = root / "service"
        with ExitStack() as stack:
            server = stack.enter_context(api_server(out, None))
            client = stack.enter_context(
                httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}, timeout=30)
            )
            env = service_env(out)
            worker_log = out / "worker.log"
            stack.enter_context(process([*WORKER, "--poll", "0.2", "--num-cpus", str(ray_cpus)], env, worker_log))
            deadline = time.monotonic() + 300
            while "polling" not in (worker_log.read_text() if worker_log.exists() else ""):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the worker did not start Ray; see {worker_log}")
                time.sleep(0.5)
            started = time.perf_counter()
            job = api_call(client, "POST", "/v1/jobs", json={"spec": TRAINING})
            while job["state"] not in ("succeeded", "failed", "cancelled"):
                time.sleep(0.5)
                job = api_call(client, "GET", f"/v1/jobs/{job['id']}")
            service_wall = time.perf_counter() - started
            if job["state"] != "succeeded":
                raise RuntimeError(f"the job {job['state']}: {job['error']}")
            run_dir = out / "artifacts" / "jobs" / str(job["id"]) / "run"
            service = {"samples_per_s": epoch_throughput(run_dir), "wall_s": service_wall}
    samples = total_samples(TRAINING)
    return {
        "direct": direct,
        "service": service,
        "throughput_ratio": service["samples_per_s"] / direct["samples_per_s"],
        "wall_samples_per_s": {"direct": samples / direct["wall_s"], "service": samples / service["wall_s"]},
        "wall_ratio": direct["wall_s"] / service["wall_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--submissions", type=int, default=2000, help="Per client count.")
    parser.add_argument("--clients", default="1,4", help="Comma-separated concurrent client counts.")
    parser.add_argument("--workers", default="1,2", help="Comma-separated API process counts.")
    parser.add_argument("--postgres-url", default=None, help="Also measure on this PostgreSQL (SQLAlchemy URL).")
    parser.add_argument("--skip-floors", action="store_true", help="Skip the empty route and the bare inserts.")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--ray-cpus", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None, help="Write every figure to this file.")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    workers = [int(w) for w in args.workers.split(",")]

    databases = [("sqlite", None)] + ([("postgresql", args.postgres_url)] if args.postgres_url else [])
    results: dict[str, Any] = {"submissions": [], "floors": {"route": [], "insert": []}}
    for name, url in databases:
        for count in workers:
            results["submissions"] += bench_submissions(name, url, args.submissions, clients, count)
    if not args.skip_floors:
        results["floors"]["route"] = bench_empty_route(args.submissions, clients)
        results["floors"]["insert"] = [bench_bare_inserts(url, args.submissions) for _, url in databases]
    if not args.skip_training:
        results["training"] = bench_training(args.ray_cpus)

    print(
        f"\n{'database':<19} {'procs':>5} {'clients':>7} {'jobs/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'server ms/req':>13} {'client cpu':>10} {'load':>5}"
    )
    for row in results["submissions"] + results["floors"]["route"]:
        print(
            f"{row['database']:<19} {row['workers']:>5} {row['clients']:>7} {row['per_second']:>7.0f} "
            f"{row['p50_ms']:>7.1f} {row['p99_ms']:>7.1f} {row['server_cpu_ms_per_request']:>13.2f} "
            f"{row['client_cpu_share']:>10.2f} {row['load_average']:>5.1f}"
        )
    for row in results["floors"]["insert"]:
        print(f"bare INSERT+COMMIT on {row['database']}: {row['per_second']:.0f}/s ({row['ms_each']:.3f} ms each)")
    if "training" in results:
        training = results["training"]
        print(
            f"\ntraining samples/s: direct {training['direct']['samples_per_s']:.0f}, "
            f"through the service {training['service']['samples_per_s']:.0f} "
            f"(ratio {training['throughput_ratio']:.3f}); wall clock {training['direct']['wall_s']:.1f} s vs "
            f"{training['service']['wall_s']:.1f} s (ratio {training['wall_ratio']:.3f})"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
