"""Control-plane cost: job submissions over REST, and a training job through the service against the same run
called directly.

1. ``POST /v1/jobs`` against a real API process (uvicorn, one worker process) on SQLite and, when a PostgreSQL
   URL is given, on PostgreSQL: submissions per second and p50/p99 latency, for 1 client and for several
   concurrent clients (targets on SQLite on 2 cores: >= 300/s, p99 < 50 ms).
2. One training job (DDP, 2 processes) through REST + queue + worker + Ray Train, against
   ``workers.training.api.train`` on the same spec and options: training throughput (the runs' own
   ``train/samples_per_s``, epoch means; target ratio >= 0.9) and, for information, samples per second of wall
   time from submission to the job's success (the worker's Ray already started; trial start-up included).

    .venv/bin/python benchmarks/control_plane.py [--submissions 2000] [--clients 1,4] [--postgres-url URL]
    eval "$(scripts/start_postgres.sh)"; .venv/bin/python benchmarks/control_plane.py \
        --postgres-url "$FLATMTL_TEST_POSTGRES_URL"
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from workers.worker.demo import api_call, create_demo_token, free_port, process, service_env, wait_healthy

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
WORKER = [sys.executable, "-c", "from workers.worker.cli import worker_command; worker_command()"]


@contextmanager
def api_server(out: Path, database_url: str | None) -> Iterator[httpx.Client]:
    """An API subprocess on ``database_url`` (default: SQLite under ``out``) and a client with a submit token."""
    extra = {"FLATMTL_DATABASE_URL": database_url} if database_url else {}
    env = service_env(out, **extra)
    if database_url:
        from service.db import Database
        from service.settings import Settings
        from service.tokens import create_token

        settings = Settings(data_dir=out.resolve(), database_url=database_url)
        database = Database.from_settings(settings)
        database.migrate()
        token = create_token(database, settings.token_key(), "bench", ["submit"])
        database.dispose()
    else:
        token = create_demo_token(out, "bench")
    port = free_port()
    command = [sys.executable, "-c", "from service.cli import serve; serve()", "--port", str(port)]
    with (
        process(command, env, out / "api.log") as api,
        httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as client,
    ):
        wait_healthy(client, api, out / "api.log", timeout_s=60)
        yield client


def submit_load(client: httpx.Client, total: int, clients: int) -> dict[str, float]:
    """``total`` submissions from ``clients`` threads (one connection each): rate and latency percentiles."""
    base_url, headers = client.base_url, client.headers
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def run(count: int) -> None:
        mine: list[float] = []
        with httpx.Client(base_url=base_url, headers=headers, timeout=30) as own:
            for _ in range(count):
                started = time.perf_counter()
                response = own.post("/v1/jobs", json={"spec": SUBMITTED})
                mine.append(time.perf_counter() - started)
                if response.status_code != 201:
                    errors.append(f"{response.status_code}: {response.text[:200]}")
        with lock:
            latencies.extend(mine)

    shares = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    threads = [threading.Thread(target=run, args=(share,)) for share in shares]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} submissions failed, first: {errors[0]}")
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "clients": clients,
        "submissions": total,
        "per_second": total / wall,
        "p50_ms": 1000 * cuts[49],
        "p99_ms": 1000 * cuts[98],
    }


def bench_submissions(database: str, url: str | None, total: int, clients: list[int]) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as directory, api_server(Path(directory), url) as client:
        submit_load(client, 100, 1)  # warm-up: connection pools, first-request imports
        for count in clients:
            rows.append({"database": database, **submit_load(client, total, count)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def epoch_throughput(run_dir: Path) -> float:
    """Mean of the epochs' training samples per second, as the run itself measured them."""
    lines = [json.loads(line) for line in (run_dir / "metrics_epochs.jsonl").read_text().splitlines()]
    return statistics.fmean(line["train/samples_per_s"] for line in lines)


def total_samples(spec: dict[str, Any]) -> int:
    global_batch = spec["batch_size"] * spec["processes"]
    steps = spec["problem_options"]["train_size"] // global_batch
    return steps * global_batch * spec["epochs"]


def bench_training(ray_cpus: int) -> dict[str, Any]:
    from workers.training import RunOptions, train

    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        started = time.perf_counter()
        train(TRAINING, root / "direct", options=RunOptions(device="cpu", threads=1))
        direct_wall = time.perf_counter() - started
        direct = {"samples_per_s": epoch_throughput(root / "direct"), "wall_s": direct_wall}

        out = root / "service"
        with ExitStack() as stack:
            client = stack.enter_context(api_server(out, None))
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
    parser.add_argument("--submissions", type=int, default=2000)
    parser.add_argument("--clients", default="1,4", help="Comma-separated concurrent client counts.")
    parser.add_argument("--postgres-url", default=None, help="Also measure on this PostgreSQL (SQLAlchemy URL).")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--ray-cpus", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None, help="Write every figure to this file.")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]

    results: dict[str, Any] = {"submissions": bench_submissions("sqlite", None, args.submissions, clients)}
    if args.postgres_url:
        results["submissions"] += bench_submissions("postgresql", args.postgres_url, args.submissions, clients)
    if not args.skip_training:
        results["training"] = bench_training(args.ray_cpus)

    print(f"\n{'database':<11} {'clients':>7} {'jobs/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for row in results["submissions"]:
        print(
            f"{row['database']:<11} {row['clients']:>7} {row['per_second']:>8.0f} "
            f"{row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f}"
        )
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
